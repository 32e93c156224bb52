"""Static (calibrated) activation scales: activations="int8-static" with a per-layer clipping
range act_amax instead of each row's own max |x|.

The numpy reference (quant/activations.quantize_per_token(x, amax), qlinear_layout.quantize_rows)
against qc_quantize_rows_static for every x86 build this host runs (bit for bit: saturation beyond
+-amax, exact ties, zeros, NaN, tails that are no multiple of the SIMD width); the ARM builds are
compared with each other under qemu by tests/test_qlinear_neon.py (tests/c/qlinear_neon_check.c).
Then quantize_weights' act_ranges, the lowering (QuantizeRows attr amax, sharing, manifest) and a
small MLP with int8 and int4 layers built into a library that equals the interpreter.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
import qcompile.build as qbuild
from qcompile.build import BuildOptions, build
from qcompile.errors import InterpretError
from qcompile.frontend import from_proto
from qcompile.ir.interpret import run, run_node
from qcompile.passes import run_pipeline
from qcompile.passes.assign_precision import PrecisionConfig, PrecisionError, assign
from qcompile.passes.quantize_weights import quantize_weights
from qcompile.prepare import Prepared
from qcompile.quant.activations import quantize_per_token, static_amax
from qcompile.targets import qlinear_layout as ql
from qcompile.targets.lower_qlinear import lower_qlinear
from qcompile.targets.plan import LoweringError
from qcompile.zoo import make_mlp

from .helpers import host_cpu_flags

RUNTIME = Path(__file__).resolve().parents[1] / "qcompile" / "artifact" / "runtime"
SRC = RUNTIME / "qc_qlinear.c"
EMU_DIR = Path(__file__).resolve().parent / "c"


FLAGS = host_cpu_flags()
BUILDS = {"scalar": [], "avx512-emulated": ["-DQL_EMULATE_X86", f"-I{EMU_DIR}"]}
if {"avx2", "fma", "f16c"} <= FLAGS:
    BUILDS["avx2"] = ["-mavx2", "-mfma", "-mf16c"]
if {"avx512f", "avx512bw", "avx512_vnni"} <= FLAGS:
    BUILDS["avx512"] = ["-march=sapphirerapids"]


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    out = tmp_path_factory.mktemp("qstatic")
    procs = {}
    for name, flags in BUILDS.items():
        so = out / f"qc_qlinear_{name}.so"
        cmd = ["gcc", "-std=c11", "-O2", "-Wall", "-Werror", "-shared", "-fPIC", *flags, str(SRC), "-o", str(so),
               "-lm"]
        procs[name] = (cmd, so, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    loaded = {}
    for name, (cmd, so, proc) in procs.items():
        _, err = proc.communicate()
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{err}"
        lib = ctypes.CDLL(str(so))
        P, i32, i64 = ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64
        lib.qc_quantize_rows.argtypes = [P, P, P, P, i32, i32, i64, i64]
        lib.qc_quantize_rows.restype = i32
        lib.qc_quantize_rows_static.argtypes = [P, P, P, P, i32, i32, i64, i64, ctypes.c_float]
        lib.qc_quantize_rows_static.restype = i32
        loaded[name] = lib
    return loaded


def c_quantize_static(lib, x, group, amax):
    M, K = x.shape
    x = np.ascontiguousarray(x, np.float32)
    xq = np.full((M, K), 99, np.int8)
    xscale = np.full(M, np.nan, np.float32)
    xsum = np.full((M, K // group), -1, np.int32)
    rc = lib.qc_quantize_rows_static(x.ctypes.data, xq.ctypes.data, xscale.ctypes.data, xsum.ctypes.data, 0, M,
                                     K, group, float(np.float32(amax)))
    assert rc == 0
    return xq, xscale, xsum


def _rows(rng, M, K, amax):
    """Rows that exercise the clipping: normal values up to ~2.5 amax (many saturate), exact .5
    ties of x*inv where inv is exact, zeros, signed zeros, NaN, infinities, a whole zero row."""
    with np.errstate(over="ignore"):            # amax near FLT_MAX: some values overflow to inf
        x = (rng.standard_normal((M, K)) * np.float64(amax)).astype(np.float32)
        specials = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, amax, -amax, 3 * amax, 1e-45], np.float32)
    inv = np.float32(127) / np.float32(amax)
    ties = ((rng.integers(-127, 127, size=(M, K)) + np.float32(0.5)) / inv).astype(np.float32)
    pick = rng.random((M, K))
    x = np.where(pick < 0.25, ties, x)
    x = np.where(pick > 0.9, specials[rng.integers(0, len(specials), size=(M, K))], x)
    if M > 2:
        x[1] = 0
    return x


# (K, group): K = 1 .. 37 and beyond 64 so that 8-wide (AVX) and 4-/8-wide (NEON) loops leave tails
SHAPES = [(1, 1), (3, 3), (7, 1), (8, 8), (9, 3), (15, 5), (16, 4), (17, 17), (24, 8), (33, 11), (37, 37),
          (64, 32), (100, 4), (129, 129)]
RANGES = [127.0, 63.5, 1.0, 0.37, 5e3, 2.0 ** -100, 3.0e38]


@pytest.mark.parametrize("K, group", SHAPES)
def test_static_quantize_rows_bit_exact(libs, K, group):
    rng = np.random.default_rng(K * 131 + group)
    for amax in RANGES:
        x = _rows(rng, 5, K, amax)
        want = ql.quantize_rows(x, group, amax)
        for name, lib in libs.items():
            got = c_quantize_static(lib, x, group, amax)
            for g_, w in zip(got, want):
                assert g_.dtype == w.dtype and np.array_equal(g_, w), (name, amax)
        # the semantics, spelled out: constant scale, saturation at +-amax, NaN -> -127
        xq, xscale, xsum = want
        a = np.float32(amax)
        assert np.all(xscale == a / np.float32(127))
        with np.errstate(invalid="ignore", over="ignore"):
            assert np.all(xq[x >= a] == 127) and np.all(xq[x <= -a] == -127)
        assert np.all(xq[np.isnan(x)] == -127) and np.all(xq[x == 0] == 0)
        assert np.array_equal(xsum, xq.astype(np.int32).reshape(5, K // group, group).sum(2))


def test_static_ties_round_to_even(libs):
    # amax = 127: inv is exactly 1, so these are exact ties; beyond +-127 saturates
    x = np.array([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 3.5, 4.5, 200, -1e30, 127.4, 0]], np.float32)
    want = [[0, 2, 2, 0, -2, -2, 126, -126, 4, 4, 127, -127, 127, 0]]
    for name, lib in libs.items():
        xq, xscale, xsum = c_quantize_static(lib, x, x.shape[1], 127.0)
        assert xq.tolist() == want and xscale[0] == 1 and xsum[0, 0] == xq.sum(), name
    assert ql.quantize_rows(x, x.shape[1], 127.0)[0].tolist() == want


def test_static_ignores_the_row_max(libs):
    """Same rows, dynamic and static: with amax equal to a row's own max both agree on that row;
    rows with a smaller max keep the static scale (coarser), rows with a larger one saturate."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    x[0] *= np.float32(4) / np.abs(x[0]).max()      # max |x| exactly 4 (well, its float32)
    x[2] *= 10
    amax = float(np.abs(x[0]).max())
    for lib in libs.values():
        sq, ss, _ = c_quantize_static(lib, x, 8, amax)
        dq, ds, _ = ql.quantize_rows(x, 8)
        assert np.array_equal(sq[0], dq[0]) and ss[0] == ds[0]
        assert np.all(ss == ss[0]) and ds[1] < ss[1] and ds[2] > ss[2]
        assert np.abs(sq[2]).max() == 127 and (np.abs(sq[2]) == 127).sum() > (np.abs(dq[2]) == 127).sum()


@pytest.mark.parametrize("amax", [0.0, -0.0, -1.0, float("nan"), float("inf"), 1e-38])
def test_static_bad_ranges_are_refused(libs, amax):
    x = np.zeros((1, 8), np.float32)
    out = np.zeros(8, np.int8), np.zeros(1, np.float32), np.zeros(1, np.int32)
    for name, lib in libs.items():
        rc = lib.qc_quantize_rows_static(x.ctypes.data, *(a.ctypes.data for a in out), 0, 1, 8, 8, amax)
        assert rc < 0, name
    with pytest.raises(ValueError, match="positive and finite"):
        quantize_per_token(x, amax)
    with pytest.raises(ValueError, match="positive and finite"):
        static_amax(amax)


def test_static_bad_shapes_are_refused(libs):
    for lib in libs.values():
        assert lib.qc_quantize_rows_static(None, None, None, None, 0, 1, 8, 3, 1.0) < 0  # K % group
        assert lib.qc_quantize_rows_static(None, None, None, None, 0, 1, 8, 8, 1.0) < 0  # null pointers
        assert lib.qc_quantize_rows_static(None, None, None, None, 2, 1, 8, 8, 1.0) < 0  # m1 < m0
        assert lib.qc_quantize_rows_static(None, None, None, None, 0, 0, 8, 8, 1.0) == 0  # no rows


# ------------------------------------------------------------------ graph level

def _two_heads():
    """x[batch, 64] -> two MatMuls reading the same x (as q/k projections do)."""
    rng = np.random.default_rng(0)
    w = [numpy_helper.from_array((rng.standard_normal((64, 32)) * 0.1).astype(np.float32), f"w{i}") for i in (0, 1)]
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"], name="proj_a"),
             helper.make_node("MatMul", ["x", "w1"], ["b"], name="proj_b")]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 32]) for n in "ab"], w)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g, _ = run_pipeline(from_proto(model))
    return g


def _quantized(g, policy="int8", activations="int8-static", act_ranges=None, **kw):
    g = g.copy()
    layers = assign(g, PrecisionConfig(policy, **kw))
    quantize_weights(g, activations=activations, act_ranges=act_ranges)
    return g, layers


def test_quantize_weights_needs_a_range_per_layer():
    g = _two_heads()
    with pytest.raises(PrecisionError, match="static activation scales need a calibrated range") as info:
        _quantized(g, act_ranges={"proj_a": 2.0})
    assert info.value.node == "proj_b" and "proj_b" in str(info.value)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(PrecisionError, match="calibrated range for this layer") as info:
            _quantized(g, act_ranges={"proj_a": 2.0, "proj_b": bad})
        assert info.value.node == "proj_b"
    with pytest.raises(PrecisionError, match="calibrated range"):
        _quantized(g)                                      # no act_ranges at all
    # nothing was rewritten before the error
    assert [n.op for n in g.nodes] == ["MatMul", "MatMul"]
    # the default is unchanged: dynamic, no range needed, no act_amax
    q, _ = _quantized(g, activations="int8")
    assert all(n.attrs["activations"] == "int8" and "act_amax" not in n.attrs for n in q.nodes)
    # with ranges: act_amax is the float32 value the kernels use
    q, _ = _quantized(g, act_ranges={"proj_a": 0.1, "proj_b": 3})
    amax = {n.name: n.attrs["act_amax"] for n in q.nodes}
    assert amax == {"proj_a": float(np.float32(0.1)), "proj_b": 3.0}
    assert all(n.op == "QLinear" and n.attrs["activations"] == "int8-static" for n in q.nodes)


def test_interpreter_uses_the_static_range(rng):
    q, _ = _quantized(_two_heads(), act_ranges={"proj_a": 0.5, "proj_b": 0.5})
    node = q.nodes[0]
    x = rng.standard_normal((3, 64)).astype(np.float32)
    consts = [q.values[i].const for i in node.inputs[1:]]
    y = run_node(node, [x] + consts)[0]
    xq, xs = quantize_per_token(x, 0.5)
    w = consts[0].astype(np.float64) * consts[1].astype(np.float64)[None]
    assert np.allclose(y, (xq.astype(np.float64) @ w) * xs, rtol=1e-6, atol=1e-7)
    assert np.abs(xq).max() == 127                    # N(0,1) beyond 0.5: saturated
    node.attrs.pop("act_amax")
    with pytest.raises(InterpretError, match="act_amax"):
        run_node(node, [x] + consts)


@pytest.mark.parametrize("ranges, shared", [({"proj_a": 2.0, "proj_b": 2.0}, True),
                                            ({"proj_a": 2.0, "proj_b": 3.0}, False)])
def test_lowering_shares_quantize_rows_only_for_equal_ranges(ranges, shared):
    q, _ = _quantized(_two_heads(), act_ranges=ranges)
    records = lower_qlinear(q)
    rows = [n for n in q.nodes if n.op == "QuantizeRows"]
    assert len(rows) == (1 if shared else 2)
    assert sorted(n.attrs["amax"] for n in rows) == sorted(set(ranges.values()))
    assert [r["activations"] for r in records] == [f"int8 static (amax {ranges[n]})" for n in ("proj_a", "proj_b")]
    # static and dynamic readers of the same x never share either
    q, _ = _quantized(_two_heads(), act_ranges=ranges)
    q.nodes[1].attrs["activations"] = "int8"
    lower_qlinear(q)
    rows = [n for n in q.nodes if n.op == "QuantizeRows"]
    assert len(rows) == 2 and sorted("amax" in n.attrs for n in rows) == [False, True]


def test_lowering_errors():
    q, _ = _quantized(_two_heads(), act_ranges={"proj_a": 2.0, "proj_b": 2.0})
    q.nodes[0].attrs.pop("act_amax")
    with pytest.raises(LoweringError, match="act_amax") as info:
        lower_qlinear(q)
    assert info.value.node == "proj_a"
    q, _ = _quantized(_two_heads(), activations="fp32")
    with pytest.raises(LoweringError, match="no CPU kernel yet") as info:
        lower_qlinear(q)
    assert info.value.node == "proj_a"


# ------------------------------------------------------------------ end to end

def _calibrated_ranges(g, feeds) -> dict[str, float]:
    """max |input| of every linear layer over the calibration feeds (interpreter observe hook)."""
    amax: dict[str, float] = {}

    def observe(node, inputs):
        if node.op in ("MatMul", "Gemm"):
            amax[node.name] = max(amax.get(node.name, 0.0), float(np.abs(inputs[0]).max()))

    run(g, feeds, observe=observe)
    return amax


def test_mlp_library_matches_the_interpreter(tmp_path, monkeypatch, rng):
    """An MLP with int8 and int4 layers, static ranges from the activations' actual maxima (the
    first layer's halved: it clips the largest inputs), built into a library: equal to the
    interpreter running the same graph, and different from dynamic scales where it clips."""
    model = make_mlp(in_features=64, hidden=(96, 128), out_features=10)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    g, _ = run_pipeline(from_proto(model))
    ranges = _calibrated_ranges(g, {"x": rng.standard_normal((32, 64)).astype(np.float32)})
    assert set(ranges) == {"layers.0/Gemm", "layers.1/Gemm", "layers.2/MatMul"}
    clipped = dict(ranges)
    clipped["layers.0/Gemm"] *= 0.5
    plan = {"overrides": {"layers.1/*": "int4-g32"}}
    static, layers = _quantized(g, act_ranges=clipped, **plan)
    dynamic, _ = _quantized(g, activations="int8", **plan)
    formats = {n.name: n.attrs["format"] for n in static.nodes if n.op == "QLinear"}
    assert formats == {"layers.0/Gemm": "int8", "layers.1/Gemm": "int4-g32", "layers.2/MatMul": "int8"}

    # build() from the already-quantized graph: prepare is what turns the ONNX file into it
    monkeypatch.setattr(qbuild, "prepare", lambda graph, quant, say=None: Prepared(static.copy(), layers))
    result = build(path, BuildOptions(out_dir=tmp_path / "out", dim_bounds={"batch": 9}))
    manifest = json.loads(result.manifest.read_text())
    acts = {r["node"]: r["activations"] for r in manifest["quantized_layers"]}
    assert acts == {name: f"int8 static (amax {np.float32(a)!s})" for name, a in clipped.items()}
    lib = qcompile.load(result.library)
    for batch, scale in ((1, 1), (4, 1), (9, 3)):    # x3: beyond the calibration, everything clips more
        x = (rng.standard_normal((batch, 64)) * scale).astype(np.float32)
        got, want = lib(x=x)["y"], run(static, {"x": x})["y"]
        ref = np.abs(want).max()
        # only float summation order differs (see test_qlinear_build): a rare rounding step
        assert np.abs(got - want).max() <= 1e-3 * ref, (batch, scale)
        dyn = run(dynamic, {"x": x})["y"]
        assert np.abs(got - dyn).max() > 1e-2 * ref, "the clipped first layer must show"

    # the first layer's input really saturates: its largest inputs map to +-127
    x = rng.standard_normal((9, 64)).astype(np.float32)
    xq, _ = quantize_per_token(x, clipped["layers.0/Gemm"])
    assert np.sum(np.abs(xq) == 127) > np.sum(np.abs(quantize_per_token(x)[0]) == 127)
