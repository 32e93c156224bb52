"""`qcompile build --target arm64`: a real aarch64 library, linked by a C program built for aarch64
and run under qemu-aarch64, computes what the x86 library computes on the same inputs."""

from __future__ import annotations

import importlib.util
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
    # one decode step: a new token against 4 cached positions (past_* inputs, present_* outputs)
    "llama_kv": (lambda: make_llama(LlamaConfig(), with_kv_cache=True), {"batch": 1, "seq": 1, "past": 4}, {}),
}
# (model, precision, group size): every weight format, on models small enough for qemu
CASES = [("mlp", "fp32", 128), ("mlp", "int8", 128), ("mlp", "int4", 32), ("mlp", "ternary", 128),
         ("llama", "fp32", 128), ("llama", "int8", 128), ("llama", "mixed", 32), ("llama", "ternary", 128),
         ("bert", "fp32", 128), ("bert", "int8", 128), ("bert", "int4", 32),
         ("llama_kv", "int8", 128), ("llama_kv", "mixed", 32)]


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

    assert_runs_like_x86(arm.library, x86.library, name, tol=1e-4 if precision == "fp32" else 2e-3)


def run_args(name: str) -> list[str]:
    _, env, modulus = MODELS[name]
    return [f"{k}={v}" for k, v in env.items()] + [f"{k}%{v}" for k, v in modulus.items()] + ["-n", "1000000"]


def assert_runs_like_x86(arm_lib: Path, x86_lib: Path, name: str, tol: float, cpu: str = "max") -> dict:
    """run_model.c, built for aarch64, prints the arm library's outputs under qemu; they must match
    the x86 library's on the same inputs. Returns what was printed."""
    _, env, modulus = MODELS[name]
    proc = qemu(cross_compile_runner(arm_lib), *run_args(name), "-t", "1", cpu=cpu)
    assert proc.returncode == 0, proc.stderr
    printed = parse_outputs(proc.stdout)
    model = qcompile.load(x86_lib)
    expected = model(**example_feeds(model, env, modulus))
    assert list(printed) == list(expected)
    for out, want in expected.items():
        got = np.array(printed[out]["values"], np.float32).reshape(printed[out]["shape"])
        assert got.shape == want.shape and np.isfinite(want).all(), out
        # integer dot products are exact on both; float kernels differ in vector width and
        # contraction, and a quantized model can move an activation across a rounding step
        assert np.abs(got - want).max() <= tol * max(1.0, float(np.abs(want).max())), out
    return printed


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


def test_android_preset_links_for_bionic_and_computes_like_linux(workdir):
    """arm64-android: kernels compiled for the aarch64-linux-android triple, linked without
    libpthread (bionic's libc has it) and with 16 KiB-aligned segments (Android 15 devices). No NDK
    here, so the glibc cross compiler stands in for the NDK's clang (--cc), which lets the library
    run under qemu: the android-triple objects must compute what the linux library computes."""
    path = onnx_file(workdir, "mlp")
    kw = dict(precision="int4", group_size=32, dim_bounds={"batch": 2}, name="mlp")
    android = build(path, BuildOptions(out_dir=workdir / "android", target="arm64-android", cc=CC, **kw))
    linux = build(path, BuildOptions(out_dir=workdir / "android-ref", target="arm64", **kw))
    dynamic = subprocess.run(["readelf", "-d", str(android.library)], capture_output=True, text=True).stdout
    assert "libpthread" not in dynamic and "libc.so" in dynamic, dynamic
    segments = subprocess.run(["readelf", "-lW", str(android.library)], capture_output=True, text=True).stdout
    loads = [line.split()[-1] for line in segments.splitlines() if line.strip().startswith("LOAD")]
    assert loads and all(int(align, 16) >= 0x4000 for align in loads), segments
    manifest = android.manifest.read_text()
    assert '"mtriple": "aarch64-linux-android"' in manifest
    outputs = []
    for lib in (android.library, linux.library):
        proc = qemu(cross_compile_runner(lib), "batch=2", "-n", "1000000")
        assert proc.returncode == 0, proc.stderr
        outputs.append(parse_outputs(proc.stdout))
    assert outputs[0] == outputs[1]            # the same integer kernels: printed digits identical


@pytest.mark.skipif(importlib.util.find_spec("ziglang") is None or shutil.which("llvm-objdump") is None,
                    reason="pip install ziglang and apt-get install llvm (bash tools/setup.sh --test does)")
def test_apple_m_builds_a_macos_arm64_dylib(workdir):
    """apple-m is build-only off a Mac: zig's clang and Mach-O linker produce the dylib, which must
    be a real arm64 macOS library: loads by @rpath, depends on libSystem only, exports the C API,
    and runs its quantized layers on sdot."""
    path = onnx_file(workdir, "llama")
    result = build(path, BuildOptions(out_dir=workdir / "apple", target="apple-m", precision="mixed",
                                      group_size=32, max_seq_len=8, name="llama"))
    assert result.library.name == "llama.dylib"
    kind = subprocess.run(["file", str(result.library)], capture_output=True, text=True).stdout
    assert "Mach-O 64-bit arm64 dynamically linked shared library" in kind, kind

    def objdump(*flags):
        proc = subprocess.run(["llvm-objdump", *flags, str(result.library)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    used = objdump("--macho", "--dylibs-used").split("\n", 1)[1].split()
    assert used[0] == "@rpath/llama.dylib" and "/usr/lib/libSystem.B.dylib" in used
    assert not [u for u in used if u.startswith("/") and "libSystem" not in u], used
    assert "minos 11.0" in " ".join(objdump("--macho", "--private-headers").split())
    symbols = objdump("--macho", "--exports-trie")
    for api in ("_llama_create", "_llama_run", "_llama_destroy", "_llama_last_error"):
        assert api in symbols, api
    assert "_llama_weights" not in symbols                 # the weight blob stays private
    assert "\tsdot\t" in objdump("-d", "--mattr=+dotprod")


def test_arm64_session_generates_what_x86_generates(workdir):
    """The decoder session (KV cache kept inside the library) under qemu: examples/generate.c,
    cross-compiled, decodes greedily token by token; the x86 library must pick the same tokens."""
    path = onnx_file(workdir, "llama_kv")
    kw = dict(precision="mixed", group_size=32, max_seq_len=16, name="llama_kv")
    arm = build(path, BuildOptions(out_dir=workdir / "arm-session", target="arm64", **kw))
    x86 = build(path, BuildOptions(out_dir=workdir / "x86-session", **kw))
    exe = arm.library.parent / "generate"
    cmd = [CC, "-O2", "-std=c11", "-Wall", "-Werror", "-DQC_NAME=llama_kv", str(ROOT / "examples" / "generate.c"),
           f"-I{arm.library.parent}", f"-L{arm.library.parent}", f"-l:{arm.library.name}",
           f"-Wl,-rpath,{arm.library.parent}", "-lm", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = qemu(exe, "10", "1", "2", "3", "4")
    assert proc.returncode == 0, proc.stderr
    from qcompile.generate import generate
    want = generate(qcompile.load(x86.library).session(), [1, 2, 3, 4], 10).tokens
    assert proc.stdout.strip() == ",".join(map(str, want))
