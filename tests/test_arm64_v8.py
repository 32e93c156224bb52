"""`qcompile build --target arm64-v8`: ARMv8.0-A + NEON without the dot product extension
(Cortex-A53/A72: Raspberry Pi 3/4).  The library's quantized kernels are qc_qlinear.c's ARMv8.0
NEON path (smlal widening multiplies; tbl table lookups for ternary single rows), so it must load
and run on `qemu-aarch64 -cpu cortex-a72`, which has no sdot, and compute what the x86 library
computes on the same inputs (as tests/test_arm64.py checks for the dotprod preset, whose helpers
this file reuses)."""

from __future__ import annotations

import subprocess

import pytest

from qcompile.build import BuildOptions, build
from qcompile.targets.presets import get_preset, isa_flags

from .helpers import parse_outputs
from .test_arm64 import (assert_runs_like_x86, cross_compile_runner, onnx_file, pytestmark,  # noqa: F401
                         qemu, run_args)

OBJDUMP = "aarch64-linux-gnu-objdump"

# (model, precision, group size): the three weight formats on the MLP, mixed (int4 + int8) on Llama
CASES = [("mlp", "int8", 128), ("mlp", "int4", 32), ("mlp", "ternary", 128), ("llama", "mixed", 32)]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("arm64_v8")


def test_preset_is_armv8_0():
    preset = get_preset("arm64-v8")
    assert preset.tvm_target == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]}
    assert preset.cpu_features == ("asimd",) and preset.status == "verified"
    assert isa_flags(preset) == ("-march=armv8-a",)
    assert isa_flags(get_preset("arm64")) == ("-march=armv8.2-a+dotprod",)
    assert isa_flags(get_preset("arm64-i8mm")) == ("-march=armv8.2-a+dotprod+i8mm",)


@pytest.mark.parametrize("name, precision, group", CASES, ids=[f"{m}-{p}" for m, p, _ in CASES])
def test_arm64_v8_library_runs_on_cortex_a72_and_matches_x86(workdir, name, precision, group):
    path = onnx_file(workdir, name)
    bounds = {"batch": 2} if name == "mlp" else {}
    kw = dict(precision=precision, group_size=group, max_seq_len=8, dim_bounds=bounds, name=name)
    arm = build(path, BuildOptions(out_dir=workdir / f"v8-{name}-{precision}", target="arm64-v8", **kw))
    x86 = build(path, BuildOptions(out_dir=workdir / f"x86-{name}-{precision}", **kw))

    disassembly = subprocess.run([OBJDUMP, "-d", str(arm.library)], capture_output=True, text=True).stdout
    assert "\tsmlal" in disassembly                # the kernels are there ...
    assert "\tsdot\t" not in disassembly and "\tsmmla\t" not in disassembly  # ... without dotprod / i8mm
    if precision == "ternary":
        assert "\ttbl\t" in disassembly and "\tld4\t" in disassembly  # the table-lookup kernel

    printed = assert_runs_like_x86(arm.library, x86.library, name, tol=2e-3, cpu="cortex-a72")
    if precision == "ternary":
        # several threads run panels concurrently, each with its own table cache: same digits
        threaded = qemu(cross_compile_runner(arm.library), *run_args(name), "-t", "3", cpu="cortex-a72")
        assert threaded.returncode == 0, threaded.stderr
        assert parse_outputs(threaded.stdout) == printed
