"""The AArch64 NEON (sdot), i8mm (smmla) and ARMv8.0 NEON (smlal, tbl) paths of qc_qlinear.c
against its scalar path, under qemu-aarch64.

tests/c/qlinear_neon_check.c is compiled with qc_qlinear.c four times, with the same flags but for
-march: armv8.2-a+dotprod selects the NEON path, armv8.2-a+dotprod+i8mm adds the smmla row-pair
kernels (prefill, M >= 2), armv8-a the ARMv8.0 NEON path (no dotprod: smlal widening multiplies,
table lookups for ternary single rows; run on -cpu cortex-a72), armv8-a+nosimd the portable scalar
one (the reference).  All builds pack the same deterministic weights, run all four families over
many shapes (see the C file: every row count the row blocks see, random shapes, and large K at the
worst cases of the ARMv8.0 path's int16 and byte partial sums) plus quantizer edge cases,
self-check against the header's math, and print one line per case; the outputs must be identical
byte for byte.  Two ARMv8.0 mutants whose int16 blocks are one chunk too long must fail.  Also:
the NEON object really contains sdot (and no smmla), the i8mm object smmla, the ARMv8.0 object
smlal and tbl but neither; the NEON build dies with SIGILL on a CPU without the dot product
extension, and the i8mm build on one with dotprod but without i8mm (Cortex-A76) as soon as a
kernel call has a row pair -- why the artifact checks CPU features when it is loaded, before any
kernel can run.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "qcompile" / "artifact" / "runtime"
SRC = RUNTIME / "qc_qlinear.c"
CHECK = ROOT / "tests" / "c" / "qlinear_neon_check.c"
CC, QEMU, OBJDUMP = "aarch64-linux-gnu-gcc", "qemu-aarch64", "aarch64-linux-gnu-objdump"
SYSROOT = Path("/usr/aarch64-linux-gnu")

_missing = [tool for tool in (CC, QEMU) if shutil.which(tool) is None]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"{' and '.join(_missing)} not installed")

MARCH = {"neon": "-march=armv8.2-a+dotprod", "i8mm": "-march=armv8.2-a+dotprod+i8mm",
         "v80": "-march=armv8-a", "scalar": "-march=armv8-a+nosimd"}
# the CPU each build's comparison run uses: the ARMv8.0 build on a core without dotprod
CPU = {"neon": "max", "i8mm": "max", "v80": "cortex-a72", "scalar": "max"}
# ARMv8.0 builds whose 4-bit / ternary int16 blocks are one chunk too long: must be caught
MUTANTS = {"mutant_nb4": ["-DQL_V80_NB4=5"], "mutant_nb2": ["-DQL_V80_NB2=17"]}
# the flags the brief asks for, and the ones the artifact builds qc_qlinear.c with (artifact/toolchain.py)
OPTS = {"O2-c11": ["-std=c11", "-O2"], "O3-gnu11": ["-std=gnu11", "-O3", "-fPIC"]}


def _qemu(cpu: str, exe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([QEMU, "-cpu", cpu, "-L", str(SYSROOT), str(exe), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def binaries(tmp_path_factory):
    """{(opt, isa): executable}, compiled in parallel."""
    out = tmp_path_factory.mktemp("qlinear_neon")
    procs = {}
    for opt, oflags in OPTS.items():
        for isa, march in MARCH.items():
            exe = out / f"check_{isa}_{opt}"
            cmd = [CC, *oflags, "-Wall", "-Werror", march, f"-I{RUNTIME}", str(CHECK), str(SRC),
                   "-o", str(exe), "-lm"]
            procs[opt, isa] = (cmd, exe, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                          stderr=subprocess.PIPE, text=True))
    for name, defs in MUTANTS.items():
        exe = out / f"check_{name}"
        cmd = [CC, *OPTS["O2-c11"], "-Wall", "-Werror", MARCH["v80"], *defs, f"-I{RUNTIME}", str(CHECK),
               str(SRC), "-o", str(exe), "-lm"]
        procs["O2-c11", name] = (cmd, exe, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                            stderr=subprocess.PIPE, text=True))
    exes = {}
    for key, (cmd, exe, proc) in procs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{err}"
        exes[key] = exe
    return exes


@pytest.mark.parametrize("opt", sorted(OPTS))
def test_neon_build_matches_scalar_build(binaries, opt):
    runs = {isa: _qemu(CPU[isa], binaries[opt, isa]) for isa in MARCH}
    for isa, proc in runs.items():
        assert proc.returncode == 0, f"{isa} build:\n{proc.stdout[-3000:]}\n{proc.stderr}"
        assert proc.stdout.rstrip().splitlines()[-1].startswith("ok "), proc.stdout[-2000:]
    scalar = runs["scalar"].stdout.splitlines()
    assert len(scalar) > 400
    # the large-K worst cases and the random shapes are there, at every row count asked for
    big = [ln for ln in scalar if ln.startswith("case ") and int(ln.split(" K=")[1].split()[0]) >= 4096]
    assert len(big) == 26 and {ln.split(" mode=")[1][0] for ln in big} == set("0123456")
    assert {ln.split(" M=")[1].split()[0] for ln in big} == {"1", "2", "3", "5", "17"}
    # activations at -128 (a QDQ file's int8 scale reaches it): int8, int4 and uint4, every row count
    low = [ln for ln in scalar if ln.startswith("case ") and ln.split(" mode=")[1][0] in "56"]
    assert {ln.split()[2] for ln in low} == {"int8", "int4", "uint4"} and len(low) == 42
    assert {ln.split(" M=")[1].split()[0] for ln in low} == {"1", "2", "3", "4", "5", "9", "17"}
    for isa in ("neon", "i8mm", "v80"):
        lines = runs[isa].stdout.splitlines()
        assert len(lines) == len(scalar), isa
        for a, b in zip(lines, scalar):
            assert a == b, f"{isa} and scalar builds differ:\n  {isa}: {a}\n  scalar: {b}"


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_v80_int16_overflow_is_caught(binaries, mutant):
    # one chunk more per int16 block overflows at the all-extreme cases: the self-check must fail
    proc = _qemu("cortex-a72", binaries["O2-c11", mutant])
    assert proc.returncode == 1 and "header math gives" in proc.stdout, proc.stdout[-2000:]
    assert proc.stdout.rstrip().splitlines()[-1].startswith("FAILED ")


def _disassemble(tmp_path: Path, isa: str) -> str:
    obj = tmp_path / f"qc_qlinear_{isa}.o"
    proc = subprocess.run([CC, "-std=c11", "-O2", "-Wall", "-Werror", MARCH[isa], "-c", str(SRC),
                           "-o", str(obj)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return subprocess.run([OBJDUMP, "-d", str(obj)], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(shutil.which(OBJDUMP) is None, reason=f"{OBJDUMP} not installed")
def test_neon_object_uses_sdot(tmp_path):
    neon, scalar = _disassemble(tmp_path, "neon"), _disassemble(tmp_path, "scalar")
    i8mm = _disassemble(tmp_path, "i8mm")
    assert "\tsdot\t" in neon and "<rows_r1_t4_b2>:" in neon  # the NEON row-block kernels
    assert "\tsmmla\t" not in neon
    assert "\tsdot\t" not in scalar and "<rows_r1_t4_b2>:" not in scalar
    assert "\tsmmla\t" not in scalar
    # i8mm: smmla for the row pairs, sdot still for single rows (M = 1, odd last row)
    assert "\tsmmla\t" in i8mm and "\tsdot\t" in i8mm
    for fn in ("rows_r4_t1_b2", "rows_r4_t1_b4", "rows_r4_t1_b8", "rows_r2_t2_b8"):
        body = i8mm.split(f"<{fn}>:", 1)[1].split("\n\n", 1)[0]
        assert "\tsmmla\t" in body and "\tsdot\t" not in body, fn
    body = i8mm.split("<rows_r1_t4_b4>:", 1)[1].split("\n\n", 1)[0]
    assert "\tsdot\t" in body and "\tsmmla\t" not in body
    # ARMv8.0: smlal for int8/4-bit and ternary row pairs, tbl lookups (vld4) for ternary rows
    v80 = _disassemble(tmp_path, "v80")
    assert "\tsdot\t" not in v80 and "\tsmmla\t" not in v80
    for fn in ("rows_r2_t1_b2", "rows_r1_t1_b4", "rows_r2_t1_b4", "rows_r1_t1_b8", "rows_r2_t1_b8"):
        body = v80.split(f"<{fn}>:", 1)[1].split("\n\n", 1)[0]
        assert "\tsmlal" in body and "\ttbl\t" not in body, fn
    lut = "lut_row" if "<lut_row>:" in v80 else "rows_r1_t1_b2"  # whether GCC inlined it
    body = v80.split(f"<{lut}>:", 1)[1].split("\n\n", 1)[0]
    assert "\ttbl\t" in body and "\tld4\t" in body and "\tsmlal" not in body
    assert "\tsmlal" not in scalar and "\ttbl\t" not in scalar and ".16b" not in scalar


def test_neon_build_sigill_without_dotprod(binaries):
    # cortex-a72 is ARMv8.0: no sdot.  The quantizer (plain ARMv8.0 NEON) runs, the first kernel
    # call dies; the scalar build runs the same call fine.
    proc = _qemu("cortex-a72", binaries["O2-c11", "neon"], "sigill")
    assert proc.returncode == -signal.SIGILL, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "kernel\n"
    for isa in ("scalar", "v80"):
        for m in ("1", "4"):
            ok = _qemu("cortex-a72", binaries["O2-c11", isa], "sigill", m)
            assert ok.returncode == 0 and ok.stdout == "kernel\n", (isa, m, ok.returncode, ok.stderr)
    ok = _qemu("max", binaries["O2-c11", "neon"], "sigill")
    assert ok.returncode == 0 and ok.stdout == "kernel\n", (ok.returncode, ok.stderr)


def test_i8mm_build_sigill_without_i8mm(binaries):
    # cortex-a76 has dotprod but not i8mm: the i8mm build runs M = 1 (sdot only) there, and dies
    # at the first kernel call with a row pair (M = 4: smmla); -cpu max runs it.
    exe = binaries["O2-c11", "i8mm"]
    proc = _qemu("cortex-a76", exe, "sigill", "4")
    assert proc.returncode == -signal.SIGILL, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "kernel\n"
    for cpu, m in (("cortex-a76", "1"), ("max", "4")):
        ok = _qemu(cpu, exe, "sigill", m)
        assert ok.returncode == 0 and ok.stdout == "kernel\n", (cpu, m, ok.returncode, ok.stderr)
    ok = _qemu("cortex-a76", binaries["O2-c11", "neon"], "sigill", "4")
    assert ok.returncode == 0 and ok.stdout == "kernel\n", (ok.returncode, ok.stderr)
