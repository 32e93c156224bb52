"""The quantized-linear C micro-kernels (artifact/runtime/qc_qlinear.c) against their numpy
reference (targets/qlinear_layout.py).

qc_qlinear.c is compiled once per session for every ISA path this host can run (scalar, AVX2,
and AVX-512 VNNI when present), plus the AVX-512 path on emulated intrinsics (tests/c/emu_x86.h)
without and with its AMX path forced, and loaded with ctypes; each test runs on every build.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qcompile.targets import qlinear_layout as ql

from .helpers import host_cpu_flags

RUNTIME = Path(__file__).resolve().parents[1] / "qcompile" / "artifact" / "runtime"
SRC = RUNTIME / "qc_qlinear.c"
FAMILIES = ["int8", "int4", "uint4", "ternary"]
HYP = settings(deadline=None, max_examples=25)


FLAGS = host_cpu_flags()
BUILDS = {"scalar": []}
if {"avx2", "fma", "f16c"} <= FLAGS:
    BUILDS["avx2"] = ["-mavx2", "-mfma", "-mf16c"]
if {"avx512f", "avx512bw", "avx512_vnni"} <= FLAGS:
    BUILDS["avx512"] = ["-march=sapphirerapids"]
# The AVX-512 VNNI path (and its AMX prefill path) on the plain-C intrinsics of tests/c/emu_x86.h:
# no -m flags, so they run on every host, and must agree with the scalar build bit for bit.
EMU_DIR = Path(__file__).resolve().parent / "c"
BUILDS["avx512-emulated"] = ["-DQL_EMULATE_X86", f"-I{EMU_DIR}"]
BUILDS["amx-emulated"] = ["-DQL_EMULATE_X86", "-DQL_EMULATE_AMX", f"-I{EMU_DIR}"]


def _load(path: Path):
    lib = ctypes.CDLL(str(path))
    P, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
    lib.qc_quantize_rows.argtypes = [P, P, P, P, i32, i32, i64, i64]
    lib.qc_quantize_rows.restype = i32
    lib.qc_qlinear_panel.argtypes = [P] * 8 + [i64, i64, i64, i64, i32, i32, i32, i32]
    lib.qc_qlinear_panel.restype = i32
    return lib


@pytest.fixture(scope="module")
def all_libs(tmp_path_factory):
    out = tmp_path_factory.mktemp("qlinear")
    procs = {}
    for name, flags in BUILDS.items():  # compiled in parallel: the emulated builds take seconds
        so = out / f"qc_qlinear_{name}.so"
        cmd = ["gcc", "-std=c11", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", *flags,
               str(SRC), "-o", str(so), "-lm"]
        procs[name] = (cmd, so, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                 text=True))
    libs = {}
    for name, (cmd, so, proc) in procs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{err}"
        libs[name] = _load(so)
    return libs


@pytest.fixture(scope="module", params=sorted(BUILDS))
def lib(request, all_libs):
    return all_libs[request.param]


def _ptr(a):
    return None if a is None else a.ctypes.data


def c_quantize(lib, x, group):
    M, K = x.shape
    x = np.ascontiguousarray(x, np.float32)
    xq = np.empty((M, K), np.int8)
    xscale = np.empty(M, np.float32)
    xsum = np.empty((M, K // group), np.int32)
    assert lib.qc_quantize_rows(_ptr(x), _ptr(xq), _ptr(xscale), _ptr(xsum), 0, M, K, group) == 0
    return xq, xscale, xsum


def c_qlinear(lib, p: ql.PackedQLinear, xq, xscale, xsum):
    M = xq.shape[0]
    y = np.full((M, p.N), np.nan, np.float32)
    for panel in range(p.panels):
        rc = lib.qc_qlinear_panel(_ptr(y), _ptr(p.weights), _ptr(p.scales), _ptr(p.zero_points),
                                  _ptr(p.colsum), _ptr(xq), _ptr(xscale), _ptr(xsum), M, p.K, p.N,
                                  p.group, p.bits, p.family_code, p.tiles, panel)
        assert rc == 0
    return y


# ------------------------------------------------------------------ problem generation

def _problem(family, kmul, nmul, seed, *, exact):
    """Random weights of `family`; K = kmul groups (int4/uint4) or kmul chunks; N = 16*nmul.
    exact: power-of-two scales, so the float part has no rounding at all (see test_exact)."""
    rng = np.random.default_rng(seed)
    kc = 4 * (8 // ql.BITS[family])
    if family in ("int4", "uint4"):
        G = int(rng.choice([32, 64, 128]))
        K = G * kmul
    else:
        G = None
        K = kc * kmul * (2 if family == "int8" else 1)
    N = 16 * nmul
    lo, hi = ql.Q_RANGE[family]
    q = rng.integers(lo, hi + 1, size=(K, N)).astype(np.int8)
    ng = K // G if G else 1
    shape = {"int8": (N,), "ternary": () if rng.random() < 0.3 else (N,)}.get(family, (ng, N))
    if exact:
        scales = (2.0 ** -rng.integers(0, 4, size=shape)).astype(np.float32)
    else:
        scales = rng.lognormal(-4, 1, size=shape).astype(np.float32)
    zp = rng.integers(0, 16, size=(ng, N)) if family == "uint4" else None
    return ql.pack_qlinear(q, family, scales, zp, G), q, rng


def _bound(p, xq, xscale, xsum):
    """Per-element bound on |C - reference| (fma vs multiply+add, see reference_qlinear)."""
    I = ql.integer_dots(p, xq, xsum).astype(np.float64)
    mag = np.abs(p.logical_scales()[None].astype(np.float64) * I).sum(axis=1)
    return 2 * p.ngroups * 2.0 ** -23 * xscale[:, None] * mag + 1e-30


family_st = st.sampled_from(FAMILIES)
kmul_st = st.integers(1, 4)
nmul_st = st.sampled_from([1, 2, 3, 4, 5, 6, 8, 9, 16])
m_st = st.integers(1, 9)
seed_st = st.integers(0, 2**32 - 1)


# ------------------------------------------------------------------ activations

@HYP
@given(M=m_st, kmul=st.integers(1, 40), group=st.sampled_from([1, 3, 4, 8]), seed=seed_st,
       logscale=st.floats(-20, 20))
def test_quantize_rows_bit_exact(lib, M, kmul, group, seed, logscale):
    rng = np.random.default_rng(seed)
    K = kmul * group  # odd K exercises the scalar tails
    x = (rng.standard_normal((M, K)) * np.float32(2.0 ** logscale)).astype(np.float32)
    if M > 1:
        x[rng.integers(M)] = 0  # all-zero row: inv = xscale = 0
    got = c_quantize(lib, x, group)
    want = ql.quantize_rows(x, group)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and np.array_equal(g, w)


def test_quantize_rows_ties_round_to_even(lib):
    # amax = 127 makes inv exactly 1, so x*inv hits the .5 ties exactly
    x = np.array([[127, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5, 4.5]], np.float32)
    xq, xscale, xsum = c_quantize(lib, x, x.shape[1])
    assert xq.tolist() == [[127, 0, 2, 2, 0, -2, -2, 126, -126, 4, 4]]
    assert xscale[0] == 1 and xsum[0, 0] == xq.sum()
    assert np.array_equal(xq, ql.quantize_rows(x, x.shape[1])[0])


def test_quantize_rows_nan_never_becomes_the_scale(all_libs):
    """Outputs are specified for finite x only, but every build treats a NaN the same way: it
    never becomes the row's max (maxps returns its second operand on NaN; the order matters)."""
    x = np.array([[1, 2, 3, 4, 5, 6, 7, np.nan] + [0.5] * 8 + [2, np.nan, -3, 1, 0, 0, 0, 9]], np.float32)
    outs = {name: [c_quantize(lib_, x[:, :k], k) for k in (8, 24)] for name, lib_ in all_libs.items()}
    for name, per_k in outs.items():
        for (xq, xscale, _), (xq0, xscale0, _) in zip(per_k, outs["scalar"]):
            assert np.array_equal(xq, xq0) and np.array_equal(xscale, xscale0), name
    assert outs["scalar"][0][1][0] == np.float32(7) / np.float32(127)


# ------------------------------------------------------------------ kernels

@HYP
@given(family=family_st, kmul=kmul_st, nmul=nmul_st, M=m_st, seed=seed_st)
def test_exact(lib, family, kmul, nmul, M, seed):
    """Power-of-two scales and activations that quantize exactly: no rounding anywhere, so the
    C output must equal the reference bit for bit (|I| < 2^18 per group, K <= 512)."""
    p, q, rng = _problem(family, kmul, nmul, seed, exact=True)
    xi = rng.integers(-127, 128, size=(M, p.K)).astype(np.float32)
    xi[:, 0] = np.where(rng.random(M) < 0.5, -127, 127)
    x = (xi * (2.0 ** rng.integers(-8, 9, size=(M, 1)))).astype(np.float32)
    xq, xscale, xsum = c_quantize(lib, x, p.group)
    assert np.array_equal(xq, xi.astype(np.int8))
    y = c_qlinear(lib, p, xq, xscale, xsum)
    ref = ql.reference_qlinear(p, xq, xscale, xsum)
    assert np.array_equal(y, ref)
    if p.ngroups == 1:  # and the integer part really is sum (q - z)*xq (z: uint4's zero point)
        qz = q.astype(np.int64) - (np.repeat(p.logical_zero_points(), p.group, 0) if family == "uint4" else 0)
        want = xscale[:, None] * (xq.astype(np.int64) @ qz * p.logical_scales()[0][None])
        assert np.array_equal(y, want.astype(np.float32))


@HYP
@given(family=family_st, kmul=kmul_st, nmul=nmul_st, M=m_st, seed=seed_st)
def test_general(lib, family, kmul, nmul, M, seed):
    p, _, rng = _problem(family, kmul, nmul, seed, exact=False)
    x = (rng.standard_normal((M, p.K)) * rng.lognormal(0, 2, size=(M, 1))).astype(np.float32)
    xq, xscale, xsum = c_quantize(lib, x, p.group)
    y = c_qlinear(lib, p, xq, xscale, xsum)
    ref = ql.reference_qlinear(p, xq, xscale, xsum)
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= _bound(p, xq, xscale, xsum)), err.max()
    assert np.max(err) <= 1e-5 * np.max(np.abs(ref)) + 1e-30


@settings(deadline=None, max_examples=10)
@given(family=family_st, kmul=kmul_st, nmul=nmul_st, M=st.one_of(m_st, st.integers(16, 40)), seed=seed_st)
def test_builds_agree_bitwise(all_libs, family, kmul, nmul, M, seed):
    """Every ISA path does the same integer dots and the same fma sequence."""
    p, _, rng = _problem(family, kmul, nmul, seed, exact=False)
    x = rng.standard_normal((M, p.K)).astype(np.float32)
    outs = {}
    for name, lib_ in all_libs.items():
        xq, xscale, xsum = c_quantize(lib_, x, p.group)
        outs[name] = c_qlinear(lib_, p, xq, xscale, xsum)
    for name, y in outs.items():
        assert np.array_equal(y.view(np.int32), outs["scalar"].view(np.int32)), name


# (family, K, G): the group sizes 32/64/128 (int8 and ternary: one group, K = G), and groups that
# leave a remainder of K after the 64-k AMX tiles (tiles 6/7 of the AMX path: 96 = 64 + 32, ...)
AMX_CASES = [(f, 2 * G if f in ("int4", "uint4") else G, G) for f in FAMILIES for G in (32, 64, 128)]
AMX_CASES += [("int4", 96 * 2, 96), ("uint4", 40 * 3, 40), ("int8", 100, 100), ("ternary", 80, 80),
              ("int8", 4, 4), ("ternary", 16, 16)]


@pytest.mark.parametrize("family, K, G", AMX_CASES)
@pytest.mark.parametrize("M", [16, 17, 33, 64])
def test_amx_rows_bitwise(all_libs, family, K, G, M):
    """M >= 16: whole 16-row blocks take the AMX path where it runs (the amx-emulated build forces
    it; real AMX hosts in the avx512 build), the rest the VNNI / AVX2 / scalar code.  Every build
    must give the scalar build's bits, and with power-of-two scales the reference's bits too;
    extreme codes against +-127 activations hit the largest dots."""
    rng = np.random.default_rng(K * 1000 + M * 7 + FAMILIES.index(family))
    N = {16: 64, 17: 48, 33: 32, 64: 16}[M]  # T = 4, 1 (3 panels), 2, 1
    lo, hi = ql.Q_RANGE[family]
    q = rng.integers(lo, hi + 1, size=(K, N)).astype(np.int8)
    q[:, 0:4], q[:, 4:8] = hi, lo
    ng = K // G
    shape = {"int8": (N,), "ternary": (N,)}.get(family, (ng, N))
    outs = {}
    for exact in (True, False):
        if exact:
            scales = (2.0 ** -rng.integers(0, 4, size=shape)).astype(np.float32)
        else:
            scales = rng.lognormal(-4, 1, size=shape).astype(np.float32)
        zp = rng.integers(0, 16, size=(ng, N)) if family == "uint4" else None
        p = ql.pack_qlinear(q, family, scales, zp, G if family in ("int4", "uint4") else None)
        xi = rng.integers(-127, 128, size=(M, K)).astype(np.float32)
        xi[:, 0] = 127  # amax = 127: xq == xi exactly
        xi[0], xi[M - 1] = 127, -127
        x = (xi * (2.0 ** rng.integers(-4, 5, size=(M, 1)))).astype(np.float32)
        outs = {}
        for name, lib_ in all_libs.items():
            xq, xscale, xsum = c_quantize(lib_, x, p.group)
            assert np.array_equal(xq, xi.astype(np.int8))
            outs[name] = c_qlinear(lib_, p, xq, xscale, xsum)
        for name, y in outs.items():
            assert np.array_equal(y.view(np.int32), outs["scalar"].view(np.int32)), (name, exact)
        if exact:
            assert np.array_equal(outs["scalar"], ql.reference_qlinear(p, xq, xscale, xsum))


def test_panel_bad_arguments(lib):
    p, _, rng = _problem("int4", 2, 4, 0, exact=False)
    xq, xscale, xsum = ql.quantize_rows(rng.standard_normal((2, p.K)).astype(np.float32), p.group)
    y = np.zeros((2, p.N), np.float32)

    def call(**kw):
        a = dict(y=y, w=p.weights, s=p.scales, zp=None, cs=None, M=2, K=p.K, N=p.N, group=p.group,
                 bits=p.bits, family=p.family_code, tiles=p.tiles, panel=0)
        a.update(kw)
        return lib.qc_qlinear_panel(_ptr(a["y"]), _ptr(a["w"]), _ptr(a["s"]), _ptr(a["zp"]),
                                    _ptr(a["cs"]), _ptr(xq), _ptr(xscale), _ptr(xsum), a["M"], a["K"],
                                    a["N"], a["group"], a["bits"], a["family"], a["tiles"], a["panel"])

    assert call() == 0
    assert call(bits=8) < 0 and call(family=7) < 0
    assert call(family=ql.QL_UINT4) < 0  # uint4 without zero points
    assert call(family=ql.QL_INT8, bits=8, group=p.K) < 0  # int8 without colsum
    assert call(group=p.group + 8) < 0 and call(K=p.K + 8) < 0 and call(tiles=3) < 0
    assert call(N=p.N + 16) < 0 and call(M=-1) < 0
    assert call(panel=p.panels) < 0 and call(panel=-1) < 0
    assert call(y=None) < 0
    assert lib.qc_quantize_rows(None, None, None, None, 0, 1, 8, 3) < 0


# ------------------------------------------------------------------ packer

@HYP
@given(family=family_st, kmul=kmul_st, nmul=nmul_st, seed=seed_st)
def test_pack_round_trip_and_layout(family, kmul, nmul, seed):
    p, q, _ = _problem(family, kmul, nmul, seed, exact=False)
    codes = (q.astype(np.int16) + ql.CODE_OFFSET[family]).astype(np.uint8)
    assert np.array_equal(ql.unpack_codes(p), codes)
    # the byte formula of the layout contract, evaluated directly
    b, T, K, N = p.bits, p.tiles, p.K, p.N
    kc = 4 * (8 // b)
    k, n = np.meshgrid(np.arange(K), np.arange(N), indexing="ij")
    sub, nl = n // 16, n % 16
    off = (((sub // T) * (K // kc) + k // kc) * T + sub % T) * 64 + nl * 4 + k % 4
    f = (k % kc) // 4
    assert np.array_equal((p.weights[off] >> (f * b)) & ((1 << b) - 1), codes)
    assert p.weights.size == K * N * b // 8 and p.weights.ctypes.data % 64 == 0
    assert p.tiles == (4 if N % 64 == 0 else 2 if N % 32 == 0 else 1)
    P = N // (16 * T)
    assert p.scales.shape == (P, p.ngroups, 16 * T) and p.scales.ctypes.data % 64 == 0
    if family == "int8":
        assert np.array_equal(p.colsum.reshape(-1), q.astype(np.int64).sum(0))
    else:
        assert p.colsum is None
    assert (p.zero_points is not None) == (family == "uint4")


@pytest.mark.parametrize("args, match", [
    ((np.zeros((64, 24), np.int8), "int4", np.ones((2, 24), np.float32), None, 32), "N=24"),
    ((np.zeros((60, 16), np.int8), "int4", np.ones((2, 16), np.float32), None, 30), "K=60"),
    ((np.zeros((96, 16), np.int8), "int4", np.ones((2, 16), np.float32), None, 64), "not a multiple"),
    ((np.zeros((64, 16), np.int8), "int4", np.ones((2, 16), np.float32), None, 12), "group size 12"),
    ((np.zeros((64, 16), np.int8), "int4", np.ones((2, 16), np.float32)), "needs group_size"),
    ((np.zeros((24, 16), np.int8), "ternary", np.float32(1)), "K=24"),
    ((np.zeros((6, 16), np.int8), "int8", np.ones(16, np.float32)), "K=6"),
    ((np.full((64, 16), 8, np.int8), "int4", np.ones((2, 16), np.float32), None, 32), r"\[-8, 7\]"),
    ((np.zeros((64, 16), np.int8), "uint4", np.ones((2, 16), np.float32), None, 32), "zero_points"),
    ((np.zeros((64, 16), np.int8), "int4", np.ones((1, 16), np.float32), None, 32), "scales"),
    ((np.zeros((64, 16), np.int8), "int5", np.ones(16, np.float32)), "unknown"),
])
def test_packer_errors(args, match):
    with pytest.raises(ValueError, match=match):
        ql.pack_qlinear(*args)


# ------------------------------------------------------------------ other targets

AMX_INSNS = ("tdpbsud", "tdpbssd", "tileloadd", "tilestored", "ldtilecfg", "tilerelease")


def _amx_insns_by_function(obj: Path) -> dict[str, set[str]]:
    """{function: AMX mnemonics in it} from objdump -d."""
    dis = subprocess.run(["objdump", "-d", str(obj)], capture_output=True, text=True, check=True).stdout
    found: dict[str, set[str]] = {}
    fn = None
    for line in dis.splitlines():
        if line.endswith(">:"):
            fn = line.split("<", 1)[1][:-2]
        elif "\t" in line:
            mnemonic = line.split("\t")[-1].split(" ")[0]
            if mnemonic in AMX_INSNS:
                found.setdefault(fn, set()).add(mnemonic)
    return found


@pytest.mark.parametrize("march", ["sapphirerapids", "icelake-server"])
def test_avx512_build(tmp_path, march):
    """The AVX-512 VNNI path (-march=icelake-server: VNNI, no AMX) and its AMX prefill path (compiled
    with a target attribute in both) must compile for real, with tdpbsud / tdpbssd in the AMX
    functions only.  They only run where the host has them; the emulated builds run them here."""
    obj = tmp_path / "q.o"
    proc = subprocess.run(["gcc", "-std=c11", "-O2", "-Wall", "-Werror", f"-march={march}", "-c",
                           str(SRC), "-o", str(obj)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if shutil.which("objdump"):
        found = _amx_insns_by_function(obj)
        assert set().union(*found.values()) >= {"tdpbsud", "tdpbssd", "tileloadd", "ldtilecfg"}, found
        assert all(fn.startswith("amx_rows") for fn in found), found


def test_emulation_matches_hardware(tmp_path):
    """tests/c/emu_x86.h against the real intrinsics, for every op this host can run (see
    tests/c/emu_check.c): random and special inputs, bit for bit."""
    if not {"avx2", "fma"} <= FLAGS:
        pytest.skip("host has no AVX2 + FMA")
    check = Path(__file__).resolve().parent / "c" / "emu_check.c"
    base = ["gcc", "-std=c11", "-O2", "-Wall", "-Werror"]
    for cmd in ([*base, "-DEMU_SIDE", f"-I{EMU_DIR}", "-c", str(check), "-o", str(tmp_path / "emu.o")],
                [*base, "-mavx2", "-mfma", str(check), str(tmp_path / "emu.o"), "-o",
                 str(tmp_path / "emu_check"), "-lm"]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(tmp_path / "emu_check")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stdout + proc.stderr


def test_aarch64_cross_compile(tmp_path):
    cc = "aarch64-linux-gnu-gcc"
    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    proc = subprocess.run([cc, "-std=c11", "-O2", "-Wall", "-Werror", "-c", str(SRC),
                           "-o", str(tmp_path / "q.o")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("family, K, G", [("ternary", 16 * 37, None), ("int4", 40 * 7, 40),
                                          ("int4", 128 * 3, 128), ("uint4", 40 * 3, 40)])
@pytest.mark.parametrize("M", [1, 2, 5])
def test_int16_block_extremes(lib, family, K, G, M):
    """AVX2 sums 2-/4-bit products in int16 over blocks of chunks (16 for ternary, 4 for 4-bit),
    with a partial block at the end here: extreme codes against +-127 activations reach the
    int16 bounds argued in qc_qlinear.c, and the result must stay exact."""
    rng = np.random.default_rng(K + M)
    N = 64
    lo, hi = ql.Q_RANGE[family]
    q = rng.integers(lo, hi + 1, size=(K, N)).astype(np.int8)
    q[:, 0:8], q[:, 8:16] = hi, lo  # largest / smallest code in every k
    ng = K // G if G else 1
    shape = (N,) if family == "ternary" else (ng, N)
    scales = (2.0 ** -rng.integers(0, 4, size=shape)).astype(np.float32)
    zp = rng.integers(0, 16, size=(ng, N)) if family == "uint4" else None
    p = ql.pack_qlinear(q, family, scales, zp, G)
    xi = rng.integers(-127, 128, size=(M, K)).astype(np.float32)
    xi[:, 0] = 127  # amax = 127: xq == xi exactly
    xi[0] = 127
    if M > 1:
        xi[1] = -127
    x = (xi * (2.0 ** rng.integers(-4, 5, size=(M, 1)))).astype(np.float32)
    xq, xscale, xsum = c_quantize(lib, x, p.group)
    assert np.array_equal(xq, xi.astype(np.int8))
    y = c_qlinear(lib, p, xq, xscale, xsum)
    assert np.array_equal(y, ql.reference_qlinear(p, xq, xscale, xsum))


@pytest.mark.parametrize("family", ["int8", "int4", "uint4"])
@pytest.mark.parametrize("extreme", ["highest", "lowest", "random"])
@pytest.mark.parametrize("M", [1, 2, 4, 5, 16, 17])
def test_activations_at_minus_128(all_libs, family, extreme, M):
    """Activations imported with a file's static scale and zero point (QDQ) span the whole int8
    range: xq = -128, which the quantizer never makes, against the extreme codes, on every ISA
    path (the AVX2 int8 sign trick takes |x| as its unsigned operand so that -128 stays exact)."""
    p, q, rng = _problem(family, 4, 4, 7, exact=True)
    if extreme != "random":
        lo, hi = ql.Q_RANGE[family]
        q = np.full_like(q, hi if extreme == "highest" else lo)
        scales = np.ones(p.logical_scales().shape, np.float32)
        zp = np.full(p.logical_scales().shape, 15 if extreme == "lowest" else 0) if family == "uint4" else None
        scales = scales[0] if family == "int8" else scales
        p = ql.pack_qlinear(q, family, scales, zp, p.group if family != "int8" else None)
    xq = rng.integers(-128, 128, size=(M, p.K)).astype(np.int8)
    xq[::2] = -128
    xscale = np.ones(M, np.float32)
    xsum = xq.astype(np.int32).reshape(M, p.K // p.group, p.group).sum(axis=2).astype(np.int32)
    ref = ql.reference_qlinear(p, xq, xscale, xsum)
    qz = q.astype(np.int64) - (np.repeat(p.logical_zero_points(), p.group, 0) if family == "uint4" else 0)
    if p.ngroups == 1:
        assert np.array_equal(ref, (xq.astype(np.int64) @ qz * p.logical_scales()[0][None]).astype(np.float32))
    for name, lib_ in all_libs.items():
        assert np.array_equal(c_qlinear(lib_, p, xq, xscale, xsum), ref), name


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("M", [1, 2, 5, 17])
def test_activations_with_massive_outlier_channels(all_libs, family, M):
    """SmolLM2's residual stream: a few channels about 230x the median (issue 21 suspected an int16
    saturation or a narrow scale there; there was none). Rows are quantized per token by each ISA
    path and must give the numpy quantizer's rows, then the reference's outputs bit for bit."""
    p, q, rng = _problem(family, 4, 4, 11, exact=False)
    x = rng.standard_normal((M, p.K)).astype(np.float32)
    channels = rng.choice(p.K, size=3, replace=False)
    x[:, channels] *= np.float32(230) * rng.choice([-1, 1], size=(M, 3)).astype(np.float32)
    x[0, channels[0]] = np.float32(3.0e4)           # one token's outlier near fp16-overflow scale
    want_q, want_s, want_sum = ql.quantize_rows(x, p.group)
    assert np.abs(want_q).max() == 127 and (np.abs(want_q) <= 1).mean() > 0.5   # most of the row rounds near 0
    for name, lib_ in all_libs.items():
        xq, xscale, xsum = c_quantize(lib_, x, p.group)
        assert np.array_equal(xq, want_q) and np.array_equal(xscale, want_s) and np.array_equal(xsum, want_sum), name
        y = c_qlinear(lib_, p, xq, xscale, xsum)
        ref = ql.reference_qlinear(p, xq, xscale, xsum)
        assert np.all(np.abs(y.astype(np.float64) - ref) <= _bound(p, xq, xscale, xsum)), name
        exact = (xq.astype(np.int64) @ (q.astype(np.int64) - (np.repeat(p.logical_zero_points(), p.group, 0)
                                                              if family == "uint4" else 0)))
        assert np.array_equal(ql.integer_dots(p, xq, xsum).sum(axis=1) if p.ngroups > 1 else
                              ql.integer_dots(p, xq, xsum)[:, 0], exact), name
