"""`qcompile build --target arm64`: a real aarch64 library, linked by a C program built for aarch64
and run under qemu-aarch64, computes what the x86 library computes on the same inputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

import qcompile
from qcompile.build import BuildOptions, build
from qcompile.zoo import BertConfig, LlamaConfig, make_bert, make_llama, make_mlp

from .helpers import example_feeds, parse_outputs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "run_model.c"
CC, QEMU, SYSROOT = "aarch64-linux-gnu-gcc", "qemu-aarch64", "/usr/aarch64-linux-gnu"

pytestmark = pytest.mark.skipif(not (shutil.which(CC) and shutil.which(QEMU)),
                                reason=f"{CC} and {QEMU} are installed by tools/setup.sh")

MODELS = {
    "mlp": (lambda: make_mlp(), {"batch": 2}, {}),
    "llama": (lambda: make_llama(LlamaConfig()), {"batch": 1, "seq": 5}, {}),
    "bert": (lambda: make_bert(BertConfig()), {"batch": 1, "seq": 6}, {"token_type_ids": 2, "attention_mask": 2}),
}
# (model, precision, group size): every weight format, on models small enough for qemu
CASES = [("mlp", "fp32", 128), ("mlp", "int8", 128), ("mlp", "int4", 32), ("mlp", "ternary", 128),
         ("llama", "fp32", 128), ("llama", "int8", 128), ("llama", "mixed", 32), ("llama", "ternary", 128),
         ("bert", "fp32", 128), ("bert", "int8", 128), ("bert", "int4", 32)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("arm64")


def onnx_file(workdir: Path, name: str) -> Path:
    path = workdir / f"{name}.onnx"
    if not path.exists():
        onnx.save(MODELS[name][0](), str(path))
    return path


def cross_compile_runner(lib: Path) -> Path:
    exe = lib.parent / "run_model"
    cmd = [CC, "-O2", "-std=c11", "-Wall", "-Werror", f"-DQC_NAME={lib.stem}", str(EXAMPLE), f"-I{lib.parent}",
           f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}", "-lm", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return exe


def qemu(exe: Path, *args, cpu: str = "max") -> subprocess.CompletedProcess:
    return subprocess.run([QEMU, "-cpu", cpu, "-L", SYSROOT, str(exe), *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("name, precision, group", CASES, ids=[f"{m}-{p}" for m, p, _ in CASES])
def test_arm64_library_matches_x86(workdir, name, precision, group):
    path = onnx_file(workdir, name)
    _, env, modulus = MODELS[name]
    bounds = {"batch": 2} if name == "mlp" else {}
    kw = dict(precision=precision, group_size=group, max_seq_len=8, dim_bounds=bounds, name=name)
    arm = build(path, BuildOptions(out_dir=workdir / f"arm-{name}-{precision}", target="arm64", **kw))
    x86 = build(path, BuildOptions(out_dir=workdir / f"x86-{name}-{precision}", **kw))

    elf = subprocess.run(["file", str(arm.library)], capture_output=True, text=True).stdout
    assert "ELF 64-bit" in elf and "aarch64" in elf, elf
    needed = subprocess.run(["readelf", "-d", str(arm.library)], capture_output=True, text=True).stdout
    libs = {line.split("[")[1].split("]")[0] for line in needed.splitlines() if "(NEEDED)" in line}
    assert libs <= {"libc.so.6", "libm.so.6", "libpthread.so.0"}, libs

    args = [f"{k}={v}" for k, v in env.items()] + [f"{k}%{v}" for k, v in modulus.items()] + ["-n", "1000000"]
    proc = qemu(cross_compile_runner(arm.library), *args, "-t", "1")
    assert proc.returncode == 0, proc.stderr
    printed = parse_outputs(proc.stdout)
    model = qcompile.load(x86.library)
    expected = model(**example_feeds(model, env, modulus))
    assert list(printed) == list(expected)
    for out, want in expected.items():
        got = np.array(printed[out]["values"], np.float32).reshape(printed[out]["shape"])
        assert got.shape == want.shape and np.isfinite(want).all(), out
        # integer dot products are exact on both; float kernels differ in vector width and
        # contraction, and a quantized model can move an activation across a rounding step
        tol = 1e-4 if precision == "fp32" else 2e-3
        assert np.abs(got - want).max() <= tol * max(1.0, float(np.abs(want).max())), out


@pytest.mark.parametrize("target, cpu, missing", [("arm64", "cortex-a72", "asimddp"),
                                                  ("arm64-i8mm", "cortex-a76", "i8mm")])
def test_cpu_without_a_feature_is_refused_with_a_message(workdir, target, cpu, missing):
    """The load-time check reads HWCAP: a CPU without a feature the library was built for gets
    ERR_CPU and a sentence, never SIGILL in a kernel."""
    path = onnx_file(workdir, "mlp")
    arm = build(path, BuildOptions(out_dir=workdir / f"gate-{target}", target=target, precision="int8",
                                   dim_bounds={"batch": 2}, name="mlp"))
    disassembly = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(arm.library)], capture_output=True,
                                 text=True).stdout
    assert "\tsdot\t" in disassembly          # the quantized kernels use the dot-product instructions
    # the same model, built for the i8mm preset, multiplies int8 tiles with smmla; arm64 never does
    assert ("\tsmmla\t" in disassembly) == (target == "arm64-i8mm")
    runner = cross_compile_runner(arm.library)
    proc = qemu(runner, "batch=1", cpu=cpu)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)     # an error exit, not a signal
    assert "create failed" in proc.stderr and "lacks" in proc.stderr and missing in proc.stderr, proc.stderr
    assert qemu(runner, "batch=1").returncode == 0                  # -cpu max has everything
