"""Issue 5 prototype: table-lookup (T-MAC / bitnet TL1 style) ternary GEMV kernels for M = 1 on
baseline AArch64 NEON, bit-exact against qc_qlinear_panel, under qemu-aarch64.

tests/c/ternary_lut_neon.c holds the kernels (lut1: ld4 + tbl1, lut4: tbl4 on the loaded lanes,
mul: smlal without dotprod) on the unchanged dot4-16x4 packed layout; its ``check`` mode packs
deterministic weights, runs every kernel and qc_qlinear_panel over all panels, compares them bit
for bit with each other and with the header's math, and prints "ok ..." when all agree.  Built for
armv8-a (qc_qlinear's ARMv8.0 NEON path, which adopted lut1) and armv8.2-a+dotprod (its sdot path).  Cases: K in
{16, 64, 1024} x N in {16, 64, 128} with random, all-zero, all +127, all -127, alternating +-127
activations, plus extreme codes (all 2, all 0, per-column extremes) and the worst cases of the
kernels' narrow accumulators (every table entry -1: low part at its maximum) at and past their
flush boundaries (K = 512, 528, 1040, 2048, 4112).  tools/arm_insn_count.py counts instructions.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "qcompile" / "artifact" / "runtime"
SRC = ROOT / "tests" / "c" / "ternary_lut_neon.c"
CC, QEMU, OBJDUMP = "aarch64-linux-gnu-gcc", "qemu-aarch64", "aarch64-linux-gnu-objdump"
SYSROOT = Path("/usr/aarch64-linux-gnu")

_missing = [tool for tool in (CC, QEMU) if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"{' and '.join(_missing)} not installed")

MARCH = {"v80": "-march=armv8-a", "dotprod": "-march=armv8.2-a+dotprod"}


def _qemu(exe: Path, *args: str, cpu: str = "max") -> subprocess.CompletedProcess:
    return subprocess.run([QEMU, "-cpu", cpu, "-L", str(SYSROOT), str(exe), *args],
                          capture_output=True, text=True, timeout=120)


def _cc(out: Path, march: str, *extra: str, objects: bool = False) -> subprocess.Popen:
    cmd = [CC, "-std=gnu11", "-O3", "-Wall", "-Wextra", "-Werror", march, f"-I{RUNTIME}", *extra]
    cmd += ["-c", str(SRC)] if objects else [str(SRC), str(RUNTIME / "qc_qlinear.c"), "-lm"]
    return subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    out = tmp_path_factory.mktemp("ternary_lut")
    jobs = {isa: (out / f"lut_{isa}", _cc(out / f"lut_{isa}", march)) for isa, march in MARCH.items()}
    # a mutant whose lut4 u16 block is one chunk too long: the extreme cases must catch the overflow
    jobs["mutant"] = (out / "lut_mutant", _cc(out / "lut_mutant", MARCH["v80"], "-DLUT4_BLOCK=65"))
    exes = {}
    for key, (exe, proc) in jobs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, err
        exes[key] = exe
    return exes


@pytest.mark.parametrize("isa", sorted(MARCH))
def test_lut_kernels_bit_exact(binaries, isa):
    proc = _qemu(binaries[isa], "check")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("ok "), lines[-5:]
    cases = [ln for ln in lines if ln.startswith("case ")]
    assert len(cases) > 100 and all(ln.endswith(" same") for ln in cases)
    for k in (16, 64, 1024):
        for n in (16, 64, 128):
            for xmode in range(6):  # random, zero, +127, -127, +-127, low-part maximum
                assert any(f"K={k} N={n} xmode={xmode} " in ln for ln in cases), (k, n, xmode)


def test_builds_agree(binaries):
    """The armv8-a build (qc's ARMv8.0 path) and the dotprod build (sdot path) print the same hashes."""
    a = _qemu(binaries["v80"], "check").stdout.splitlines()
    b = _qemu(binaries["dotprod"], "check").stdout.splitlines()
    assert a == b


def test_single_case_and_cortex_a72(binaries):
    # the armv8-a build, LUT kernels included, runs on an ARMv8.0 core without dotprod
    proc = _qemu(binaries["v80"], "check", "1024", "128", "0", "0", cpu="cortex-a72")
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "ok 1 cases, 0 mismatches", (
        proc.stdout + proc.stderr)
    proc = _qemu(binaries["v80"], "run", "lut1", "256", "64", "2", cpu="cortex-a72")
    assert proc.returncode == 0 and proc.stdout.startswith("lut1 "), proc.stderr


def test_overflow_mutant_is_caught(binaries):
    proc = _qemu(binaries["mutant"], "check")
    assert proc.returncode == 1 and "MISMATCH" in proc.stdout and "lut4 y[" in proc.stdout


@pytest.mark.skipif(shutil.which(OBJDUMP) is None, reason=f"{OBJDUMP} not installed")
def test_lut_kernels_are_armv80_table_lookups(tmp_path):
    obj = tmp_path / "lut.o"
    proc = _cc(obj, MARCH["v80"], objects=True)
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    dis = subprocess.run([OBJDUMP, "-d", str(obj)], capture_output=True, text=True, check=True).stdout

    def body(fn):
        return dis.split(f"<{fn}>:", 1)[1].split("\n\n", 1)[0]

    assert "\tsdot\t" not in dis
    lut1, lut4, mul = body("gemv_lut1"), body("gemv_lut4"), body("gemv_mul")
    assert "\tld4\t" in lut1 and "tbl\tv" in lut1 and "{v" in lut1
    assert "-v" in lut4.split("\ttbl\t", 1)[1].split("\n", 1)[0]  # a 4-register table
    assert "\tsmlal" in mul and "\ttbl\t" not in mul


def test_insn_counter_exact():
    """tools/arm_insn_count.py on a loop of known length (3 instructions per iteration)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import arm_insn_count as aic
    finally:
        sys.path.pop(0)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        exe = aic.build([SRC, RUNTIME / "qc_qlinear.c"], "armv8-a", Path(tmp) / "lut")
        # same digit counts in argv and output (strtoull / printf cost per digit)
        d = aic.count_diff([str(exe), "loop", "3000"], [str(exe), "loop", "1000"])
        assert d.total == 3 * 2000
        k = aic.count_diff([str(exe), "run", "lut1", "64", "64", "2"],
                           [str(exe), "run", "lut1", "64", "64", "1"])
        # one kernel call, plus the run loop's strcmp calls (libc) and main's own instructions
        assert 0.95 * k.total <= k.by_symbol["gemv_lut1"] < k.total
