"""Models quantized by other tools compile into integer kernels (the import_quantized pass).

Two producers, both onnxruntime's own: `quantize_static` (QDQ format: DequantizeLinear on int8
weights, QuantizeLinear -> DequantizeLinear pairs on activations) and the MatMulNBits quantizer
(com.microsoft.MatMulNBits, 4-bit blocks). Each model is imported, run through the default
pipeline, checked to hold qcompile.QLinear layers, interpreted, built for the native preset, and
compared with onnxruntime on the same file.

Tolerances (x ~ N(0, 1), batch 8, several seeds):

* library vs reference interpreter on the same imported graph: the integer parts are identical;
  only the float summation order of the QLinear kernels differs (1e-7 relative). In a QDQ model
  that can move an activation across a rounding boundary of the next static QuantizeLinear: one
  step of that grid at most, so the bound is one output step (measured: 0).
* MatMulNBits vs onnxruntime: the weights are the same bit for bit (checked); onnxruntime
  multiplies fp32 activations, our kernels quantize them to int8 per token (absmax / 127). That
  rounding is uniform in +-max|x_row| / 254, RMS max|x_row| / (127 sqrt 12) ~ 0.23% of a row's max,
  ~0.7% of its RMS for a Gaussian row of 128 (max ~ 3 RMS), per layer; two layers in quadrature
  ~1%. Bound: relative L2 error 2.5%, max error 4% of max|y| (measured: 0.75-0.8% and < 1%).
* QDQ vs onnxruntime: the model's own static Q/DQ pairs are kept (they define its numbers: they
  round to the calibrated grid and saturate, and quantize_static folds the Relu into the zero point
  -128 of the QuantizeLinear after a Gemm), so the only difference is again our per-token int8
  re-quantization of each QLinear input, a ~0.5-1% perturbation of each layer's output. The final
  static QuantizeLinear turns it into outputs that land one grid step away from onnxruntime's
  where the perturbation crosses a rounding boundary (two after a flip upstream). Bound, in steps
  of the output grid: max 3, RMS 1 (measured: max 1-2, RMS ~0.6; rel L2 ~1.8%, while the int8
  model itself is 2-7% off the fp32 one).
  onnxruntime is run with ORT_ENABLE_BASIC, i.e. the QDQ graph as written. Its default session
  fuses QDQ into int8 kernels which, on an x86 CPU without VNNI, sum u8 x s8 pairs in int16
  (vpmaddubsw) and saturate: on the per-channel model here it is 3-4 output steps off the model
  itself (0 with reduce_range=True, whose 7-bit weights cannot saturate: checked). That is
  onnxruntime's documented u8s8 saturation issue, not a property of the model.
"""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import qcompile
from qcompile.build import BuildOptions, build
from qcompile.frontend import from_proto
from qcompile.ir.interpret import run
from qcompile.ir.interpret.quant import matmul_nbits_weight
from qcompile.ir.quant import QuantSpec
from qcompile.passes import run_pipeline
from qcompile.passes.file_activations import use_file_activations
from qcompile.selftest import _error as selftest_error
from qcompile.passes.import_quantized import ImportQuantizedError, import_report

quantization = pytest.importorskip("onnxruntime.quantization")
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer  # noqa: E402

BATCH = 8


# ------------------------------------------------------------------------------------ models


def make_mlp(layers, in_features, seed=0) -> onnx.ModelProto:
    """x[batch, in] -> y: layers is a list of (kind, N, relu); kind "matmul" (W [K, N] + bias Add)
    or "gemm" (Gemm transB=1, W [N, K], bias C)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    h, k = "x", in_features
    for i, (kind, n, relu) in enumerate(layers):
        w = (rng.standard_normal((k, n)) * k ** -0.5).astype(np.float32)
        b = (rng.standard_normal(n) * 0.1).astype(np.float32)
        inits.append(numpy_helper.from_array(b, f"layer{i}.bias"))
        if kind == "gemm":
            inits.append(numpy_helper.from_array(np.ascontiguousarray(w.T), f"layer{i}.weight"))
            nodes.append(helper.make_node("Gemm", [h, f"layer{i}.weight", f"layer{i}.bias"], [f"gemm{i}"],
                                          name=f"layer{i}/Gemm", transB=1))
            h = f"gemm{i}"
        else:
            inits.append(numpy_helper.from_array(w, f"layer{i}.weight"))
            nodes += [helper.make_node("MatMul", [h, f"layer{i}.weight"], [f"mm{i}"], name=f"layer{i}/MatMul"),
                      helper.make_node("Add", [f"mm{i}", f"layer{i}.bias"], [f"add{i}"], name=f"layer{i}/Add")]
            h = f"add{i}"
        if relu:
            nodes.append(helper.make_node("Relu", [h], [f"relu{i}"], name=f"layer{i}/Relu"))
            h = f"relu{i}"
        k = n
    nodes.append(helper.make_node("Identity", [h], ["y"], name="output"))
    graph = helper.make_graph(nodes, "mlp", [tensor("x", ["batch", in_features])], [tensor("y", ["batch", k])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def tensor(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


class Calibration(quantization.CalibrationDataReader):
    """A few batches of N(0, 1) inputs, as the test feeds."""

    def __init__(self, in_features, batches=4, seed=100):
        rng = np.random.default_rng(seed)
        self.data = iter([{"x": rng.standard_normal((BATCH, in_features)).astype(np.float32)} for _ in range(batches)])

    def get_next(self):
        return next(self.data, None)


QDQ_LAYERS = [("matmul", 128, True), ("gemm", 64, True), ("matmul", 32, False)]
QDQ_IN = 64
NBITS_LAYERS = [("matmul", 128, True), ("matmul", 32, False)]
NBITS_IN = 128
# (block_size, is_symmetric) of each of the two MatMul layers: the four combinations over two models
NBITS_CASES = {"g32sym-g128asym": ((32, True), (128, False)), "g128sym-g32asym": ((128, True), (32, False))}


def quantize_static(tmp, layers, in_features, **kw) -> tuple:
    """(fp32 model path, QDQ model path) of make_mlp(layers) through onnxruntime's quantize_static."""
    fp32, path = tmp / "fp32.onnx", tmp / "qdq.onnx"
    onnx.save(make_mlp(layers, in_features), str(fp32))
    logging.disable(logging.WARNING)          # quantize_static's "consider pre-processing" advice
    try:
        quantization.quantize_static(str(fp32), str(path), Calibration(in_features),
                                     quant_format=quantization.QuantFormat.QDQ, **kw)
    finally:
        logging.disable(logging.NOTSET)
    return fp32, path


def nbits_model(tmp, combo) -> tuple:
    fp32 = make_mlp(NBITS_LAYERS, NBITS_IN)
    model = copy.deepcopy(fp32)
    names = [f"layer{i}/MatMul" for i in range(len(combo))]
    for i, (block, symmetric) in enumerate(combo):     # one layer per run: the others are excluded
        quantizer = MatMulNBitsQuantizer(model, block_size=block, is_symmetric=symmetric,
                                         nodes_to_exclude=[n for j, n in enumerate(names) if j != i])
        quantizer.process()
        model = quantizer.model.model
    assert [n.op_type for n in model.graph.node].count("MatMulNBits") == len(combo)
    fp32_path, path = tmp / "fp32.onnx", tmp / "nbits.onnx"
    onnx.save(fp32, str(fp32_path))
    onnx.save(model, str(path))
    return fp32_path, path


def ort_outputs(path, x, basic=False):
    opts = ort.SessionOptions()
    if basic:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def imported(path):
    graph, _ = run_pipeline(from_proto(onnx.load(str(path))))
    return graph


def built(path) -> dict:
    """Build for the native preset: the loaded library, its manifest and the imported graph."""
    result = build(path, BuildOptions(out_dir=path.parent / "out", target="native", dim_bounds={"batch": BATCH}))
    return {"lib": qcompile.load(result.library), "manifest": json.loads(result.manifest.read_text()),
            "graph": imported(path)}


def integer_layers(manifest) -> list[str]:
    """The formats of the layers the library runs on the packed integer kernels."""
    assert "qcompile.QLinearPacked" in {k["op"] for k in manifest["kernels"]}
    return [layer["format"] for layer in manifest["quantized_layers"]]


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", params=[False, True], ids=["per_tensor", "per_channel"])
def qdq_case(request, tmp_path_factory):
    per_channel = request.param
    tmp = tmp_path_factory.mktemp("qdq_pc" if per_channel else "qdq_pt")
    # int8 activations for one model, uint8 for the other: both QuantizeLinear kernels get built
    acts = quantization.QuantType.QUInt8 if per_channel else quantization.QuantType.QInt8
    fp32, path = quantize_static(tmp, QDQ_LAYERS, QDQ_IN, per_channel=per_channel, activation_type=acts,
                                 weight_type=quantization.QuantType.QInt8)
    return {**built(path), "fp32": fp32, "path": path, "per_channel": per_channel}


@pytest.fixture(scope="module", params=list(NBITS_CASES))
def nbits_case(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"nbits_{request.param}")
    fp32, path = nbits_model(tmp, NBITS_CASES[request.param])
    return {**built(path), "fp32": fp32, "path": path}


# ------------------------------------------------------------------------------------ QDQ


def test_qdq_model_compiles_to_integer_kernels_and_matches_onnxruntime(qdq_case):
    graph, lib = qdq_case["graph"], qdq_case["lib"]
    ops = graph.op_histogram()
    assert ops.get("qcompile.QLinear") == 3 and "MatMul" not in ops and "Gemm" not in ops, ops
    report = import_report(graph)
    assert [e["node"] for e in report] == ["layer0/MatMul", "layer1/Gemm", "layer2/MatMul"]
    assert all(e["exact"] and e["format"] == "int8" for e in report), report
    assert integer_layers(qdq_case["manifest"]) == ["int8"] * 3
    # the static activation quantization stays: every QLinear reads a DequantizeLinear, and records
    # the integers behind it; the build then feeds it those (the file's scale and zero point)
    producers = graph.producers()
    assert all(producers[n.inputs[0]].op == "DequantizeLinear" for n in graph.nodes if n.op == "QLinear")
    graph = graph.copy()
    assert len(use_file_activations(graph)) == 3
    producers = graph.producers()
    assert all(producers[n.inputs[0]].op == "QuantizeLinear" and n.attrs["activations"] == "int8-file"
               for n in graph.nodes if n.op == "QLinear")
    assert all(layer["activations"].startswith("int8 from the file (scale ")
               for layer in qdq_case["manifest"]["quantized_layers"])

    model = onnx.load(str(qdq_case["path"]))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    final = producer[producer["y"].input[0]]                 # y = Identity(DequantizeLinear(...))
    assert final.op_type == "DequantizeLinear"
    step = float(inits[final.input[1]])                      # the output grid's step
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((BATCH, QDQ_IN)).astype(np.float32)
        got, ref = lib(x=x)["y"], run(graph, {"x": x})["y"]
        expected, fp32 = ort_outputs(qdq_case["path"], x, basic=True), ort_outputs(qdq_case["fp32"], x)
        assert np.abs(got - ref).max() <= step * 1.001
        off = np.abs(got - expected) / step                      # in output grid steps
        assert np.abs(ref - expected).max() <= step * 1.001     # the reference is onnxruntime's math
        rms = float(np.sqrt(np.mean(off ** 2)))
        print(f"qdq {'per_channel' if qdq_case['per_channel'] else 'per_tensor'} seed {seed}: |lib-interp| "
              f"{np.abs(got - ref).max() / step:.0f} steps; lib vs onnxruntime: max {off.max():.1f} steps, RMS "
              f"{rms:.2f} steps, {np.mean(off > 0.5):.0%} of outputs off the same grid point, rel L2 "
              f"{rel(got, expected):.4f} (onnxruntime vs fp32: {rel(expected, fp32):.4f}); default-session "
              f"onnxruntime vs the model: {np.abs(ort_outputs(qdq_case['path'], x) - expected).max() / step:.0f} steps")
        assert off.max() <= 1.001 and np.mean(off > 0.5) <= 0.01


def test_qdq_weights_without_an_exact_kernel_are_requantized_and_reported(tmp_path, caplog):
    """uint8 weights with asymmetric zero points: q - zp spans more than [-127, 127]."""
    fp32, path = quantize_static(tmp_path, NBITS_LAYERS, NBITS_IN, weight_type=quantization.QuantType.QUInt8,
                                 activation_type=quantization.QuantType.QUInt8)
    with caplog.at_level(logging.WARNING, logger="qcompile.import_quantized"):
        graph = imported(path)
    report = import_report(graph)
    inexact = [e for e in report if not e["exact"]]
    assert inexact and all("re-quantized" in e["note"] for e in inexact), report
    assert all(e["node"] in caplog.text for e in inexact)
    assert graph.op_histogram().get("qcompile.QLinear") == 2
    x = np.random.default_rng(0).standard_normal((BATCH, NBITS_IN)).astype(np.float32)
    expected, reference = ort_outputs(path, x, basic=True), ort_outputs(fp32, x)
    assert rel(run(graph, {"x": x})["y"], expected) <= rel(expected, reference)


# ------------------------------------------------------------------------------------ MatMulNBits


def test_matmul_nbits_model_compiles_and_matches_onnxruntime(nbits_case):
    graph, lib = nbits_case["graph"], nbits_case["lib"]
    ops = graph.op_histogram()
    assert ops.get("qcompile.QLinear") == 2 and "com.microsoft.MatMulNBits" not in ops, ops
    assert [f[:4] for f in integer_layers(nbits_case["manifest"])] == ["int4"] * 2
    for seed in range(3):
        x = np.random.default_rng(seed).standard_normal((BATCH, NBITS_IN)).astype(np.float32)
        got, ref = lib(x=x)["y"], run(graph, {"x": x})["y"]
        expected, fp32 = ort_outputs(nbits_case["path"], x), ort_outputs(nbits_case["fp32"], x)
        scale = np.abs(expected).max()
        assert np.abs(got - ref).max() <= 1e-5 * scale
        err = rel(got, expected)
        print(f"nbits seed {seed}: |lib-interp| {np.abs(got - ref).max() / scale:.1e}, rel L2 vs onnxruntime "
              f"{err:.4f}, max {np.abs(got - expected).max() / scale:.4f} (4-bit weights vs fp32: "
              f"{rel(expected, fp32):.3f})")
        assert err <= 0.025
        assert np.abs(got - expected).max() <= 0.04 * scale
        # onnxruntime keeps MatMulNBits' activations in float: the same graph with float activations is
        # onnxruntime's math, and the library is as far from it as the manifest says int8 activations move
        # the outputs (measured on the build's test vectors; other inputs land within a small factor)
        floating = graph.copy()
        for n in floating.nodes:
            if n.op == "QLinear":
                n.attrs["activations"] = "fp32"
        assert np.abs(run(floating, {"x": x})["y"] - expected).max() <= 1e-5 * scale
        reported = nbits_case["manifest"]["self_test"]["int8_activation_error"]["y"]
        assert 1e-4 < reported and selftest_error(got, expected) <= 3 * reported


def onnxruntime_weight(model, node) -> np.ndarray:
    """MatMulNBits' weight [K, N] as onnxruntime computes it: the node alone applied to I_K (one
    product per output, so exact)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    k, n = attrs["K"], attrs["N"]
    graph = helper.make_graph([node], "w", [tensor(node.input[0], [k, k])], [tensor(node.output[0], [k, n])],
                              [t for t in model.graph.initializer if t.name in node.input])
    alone = helper.make_model(graph, opset_imports=model.opset_import)
    sess = ort.InferenceSession(alone.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {node.input[0]: np.eye(k, dtype=np.float32)})[0]


@pytest.mark.parametrize("case", list(NBITS_CASES))
def test_matmul_nbits_weights_are_imported_exactly(case, tmp_path):
    """dequantize(QLinear) == MatMulNBits' weight bit for bit (as onnxruntime and the reference
    interpreter compute it); symmetric files become int4 with q = code - 8, -8 included."""
    _, path = nbits_model(tmp_path, NBITS_CASES[case])
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    graph = imported(path)
    qlinear = {n.name: n for n in graph.nodes if n.op == "QLinear"}
    for node, (block, symmetric) in zip([n for n in model.graph.node if n.op_type == "MatMulNBits"],
                                        NBITS_CASES[case]):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        b, scales = inits[node.input[1]], inits[node.input[2]]
        zp = inits[node.input[3]] if len(node.input) > 3 and node.input[3] else None
        assert (zp is None) == symmetric
        w = matmul_nbits_weight(b, scales, zp, attrs["N"], attrs["K"], 4, attrs["block_size"])   # [N, K]
        np.testing.assert_array_equal(w.T, onnxruntime_weight(model, node))
        ql = qlinear[node.name]
        a = ql.attrs
        q, s = graph.values[ql.inputs[1]].const, graph.values[ql.inputs[2]].const
        z = graph.values[ql.inputs[3]].const if len(ql.inputs) > 3 else None
        spec = QuantSpec(a["family"], a["bits"], a["granularity"], a["axis"], a["group_size"], scales=s,
                         zero_points=z)
        np.testing.assert_array_equal(spec.dequantize(q), w.T)
        assert a["group_size"] == block and a["format"].startswith(f"int4-g{block}")
        assert a["family"] == ("int4" if symmetric else "uint4")
        if symmetric:
            assert q.min() >= -8 and q.max() <= 7


# ------------------------------------------------------------------------------------ errors


def _nbits_node_model(block=32, k=128, n=16, g_idx=False, lowest_code=0, bias=False) -> onnx.ModelProto:
    """One symmetric MatMulNBits node "proj/MatMulNBits" with random codes in [lowest_code, 15]."""
    rng = np.random.default_rng(0)
    nb = -(-k // block)
    codes = rng.integers(lowest_code, 16, (n, nb, block), dtype=np.uint8)
    b = codes[..., 0::2] | (codes[..., 1::2] << 4)                  # two per byte, low nibble first
    arrays = {"B": b, "scales": rng.random((n * nb,), dtype=np.float32),
              "g_idx": (np.arange(k) // block).astype(np.int32) if g_idx else None,
              "bias": rng.standard_normal(n).astype(np.float32) if bias else None}
    inits = [numpy_helper.from_array(a, name) for name, a in arrays.items() if a is not None]
    inputs = ["x", "B", "scales", "", "g_idx" if g_idx else "", "bias" if bias else ""]
    while not inputs[-1]:
        inputs.pop()
    node = helper.make_node("MatMulNBits", inputs, ["y"], name="proj/MatMulNBits", domain="com.microsoft",
                            K=k, N=n, bits=4, block_size=block)
    graph = helper.make_graph([node], "nbits", [tensor("x", ["batch", k])], [tensor("y", ["batch", n])], inits)
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("lowest_code", [0, 1])
def test_matmul_nbits_symmetric_codes_and_bias(lowest_code):
    """Symmetric codes become int4 q = code - 8, code 0 (q = -8) included. The bias input becomes
    an Add; with float activations the imported graph computes what MatMulNBits does."""
    model = _nbits_node_model(lowest_code=lowest_code, bias=True)
    g = run_pipeline(from_proto(model))[0]
    (ql,) = [n for n in g.nodes if n.op == "QLinear"]
    assert ql.attrs["family"] == "int4" and ql.attrs["format"] == "int4-g32"
    assert [n.op for n in g.nodes] == ["QLinear", "Add"]
    assert len(ql.inputs) == 3 and g.values[ql.inputs[1]].const.min() == lowest_code - 8
    ql.attrs["activations"] = "fp32"
    x = np.random.default_rng(1).standard_normal((3, 128)).astype(np.float32)
    expected = run(from_proto(model), {"x": x})["y"]
    np.testing.assert_allclose(run(g, {"x": x})["y"], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("kw, message", [
    (dict(block=16), "block_size 16 is not one of 32, 64, 128"),
    (dict(g_idx=True), "g_idx"),
    (dict(block=32, k=80), "K=80 is not a multiple of block_size 32"),
])
def test_unsupported_matmul_nbits_is_an_error_naming_the_node(kw, message):
    model = _nbits_node_model(**kw)
    x = np.random.default_rng(0).standard_normal((2, model.graph.input[0].type.tensor_type.shape.dim[1].dim_value))
    run(from_proto(model), {"x": x.astype(np.float32)})          # the reference interpreter runs it
    with pytest.raises(ImportQuantizedError, match=message) as info:
        run_pipeline(from_proto(model))
    text = str(info.value)
    assert "proj/MatMulNBits" in text and "com.microsoft.MatMulNBits" in text and "[import_quantized]" in text
    assert info.value.hint


# ------------------------------------------------------------------------------------ Q/DQ kernels


def _fake_quant_model(qtype, scale, zp, axis=1, opset=18) -> onnx.ModelProto:
    """x[n, 6] -> QuantizeLinear -> q (an output too) -> DequantizeLinear -> y."""
    inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
             numpy_helper.from_array(np.asarray(zp, helper.tensor_dtype_to_np_dtype(qtype)), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="quant", axis=axis),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dequant", axis=axis)]
    outputs = [tensor("q", ["n", 6], qtype), tensor("y", ["n", 6])]
    graph = helper.make_graph(nodes, "fq", [tensor("x", ["n", 6])], outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _jit(model):
    import tvm

    from qcompile.targets.plan import make_plan
    from qcompile.targets.presets import get_preset
    from qcompile.targets.tvm.compile import schedule_all
    from qcompile.targets.tvm.host import resolve
    from qcompile.targets.tvm.kernels import build_kernels
    graph, _ = run_pipeline(from_proto(model))
    plan = make_plan(graph, {"n": 64})
    target = tvm.target.Target(resolve(get_preset("native")).tvm_target)
    module = tvm.compile(schedule_all(build_kernels(plan, "fq"), target)[0], target=target)
    return graph, plan, module


def test_quantize_dequantize_kernels_round_half_to_even_and_saturate():
    """The kernels that run a QDQ model's activation pairs, against numpy's ONNX semantics and the
    interpreter: ties (power-of-two scales make x / s exactly k + 0.5), saturation at both ends,
    int8 and uint8, per tensor and per axis."""
    from qcompile.targets.tvm.jit import run_plan
    rng = np.random.default_rng(0)
    ties = (np.arange(-40, 40) + 0.5).astype(np.float32)
    cases = [(TensorProto.INT8, 0.5, 3), (TensorProto.UINT8, 0.25, 128),
             (TensorProto.INT8, [0.25, 0.5, 1, 2, 4, 0.125], [-3, 0, 5, 127, -128, 1]),
             (TensorProto.UINT8, [0.25, 0.5, 1, 2, 4, 0.125], [0, 7, 128, 255, 3, 100])]
    for qtype, scale, zp in cases:
        graph, plan, module = _jit(_fake_quant_model(qtype, scale, zp))
        s, z = np.asarray(scale, np.float32), np.asarray(zp, np.float32)
        x = np.concatenate([np.resize(ties, (14, 6)) * s,                  # exact halves of every scale
                            rng.standard_normal((8, 6)).astype(np.float32) * 40,
                            np.full((1, 6), 1e6, np.float32), np.full((1, 6), -1e6, np.float32)]).astype(np.float32)
        info = np.iinfo(helper.tensor_dtype_to_np_dtype(qtype))
        q = np.clip(np.rint(x / s) + z, info.min, info.max)
        got, ref = run_plan(plan, module, {"x": x}), run(graph, {"x": x})
        np.testing.assert_array_equal(got["q"], q.astype(info.dtype))
        np.testing.assert_array_equal(got["y"], ((q - z) * s).astype(np.float32))
        for name in ("q", "y"):
            np.testing.assert_array_equal(got[name], ref[name])


def test_activation_quantization_without_a_kernel_is_an_error_naming_the_node():
    from qcompile.targets.plan import LoweringError, make_plan
    from qcompile.targets.tvm.kernels import build_kernels
    graph, _ = run_pipeline(from_proto(_fake_quant_model(TensorProto.INT16, 0.5, 0, opset=21)))
    with pytest.raises(LoweringError, match="QuantizeLinear to int16") as info:
        build_kernels(make_plan(graph, {"n": 4}), "fq")
    assert info.value.node == "quant"


# ------------------------------------------------------------------------------------ other QDQ weights


def test_qdq_weight_encodings_that_import_exactly():
    """Hand-made QDQ weights (opset 21): int8 per axis with nonzero zero points that fit once
    folded into q, int4 and uint4 blocks along K, uint8 with zero point 128 read through a
    Transpose, and a Gemm with alpha, beta and a bias. With the QLinear activations left in
    float, the imported graph computes exactly what the QDQ one does."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def dq(name, codes, scale, zp=None, **attrs):
        arrays = {f"{name}.q": codes, f"{name}.s": scale, **({f"{name}.zp": zp} if zp is not None else {})}
        inits.extend(numpy_helper.from_array(a, n) for n, a in arrays.items())
        nodes.append(helper.make_node("DequantizeLinear", list(arrays), [f"{name}.w"], **attrs))
        return f"{name}.w"

    int4, uint4 = (helper.tensor_dtype_to_np_dtype(t) for t in (TensorProto.INT4, TensorProto.UINT4))

    def scales(*shape):
        return (rng.random(shape) * 0.02 + 0.005).astype(np.float32)

    zp0 = rng.integers(-5, 6, 64).astype(np.int8)
    w0 = dq("w0", (rng.integers(-120, 121, (64, 64)) + zp0).astype(np.int8), scales(64), zp0, axis=1)
    inits.append(numpy_helper.from_array(rng.standard_normal(64).astype(np.float32), "c0"))
    nodes.append(helper.make_node("Gemm", ["x", w0, "c0"], ["h0"], name="gemm_alpha_beta", alpha=0.5, beta=2.0))
    w1 = dq("w1", rng.integers(-7, 8, (64, 64)).astype(int4), scales(2, 64), axis=0, block_size=32)
    nodes.append(helper.make_node("MatMul", ["h0", w1], ["h1"], name="int4_blocks"))
    zp2 = rng.integers(0, 16, (2, 16)).astype(uint4)
    w2 = dq("w2", rng.integers(0, 16, (64, 16)).astype(uint4), scales(2, 16), zp2, axis=0, block_size=32)
    nodes.append(helper.make_node("MatMul", ["h1", w2], ["h2"], name="uint4_blocks"))
    w3 = dq("w3", rng.integers(1, 256, (8, 16)).astype(np.uint8), rng.random(8).astype(np.float32) * 0.01 + 0.01,
            np.full(8, 128, np.uint8), axis=0)                 # stored [N, K], per output channel
    nodes.append(helper.make_node("Transpose", [w3], ["w3.t"], perm=[1, 0]))
    nodes.append(helper.make_node("MatMul", ["h2", "w3.t"], ["y"], name="uint8_zp128_transposed"))
    graph = helper.make_graph(nodes, "qdq_weights", [tensor("x", ["n", 64])], [tensor("y", ["n", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])

    g = run_pipeline(from_proto(model))[0]
    report = {e["node"]: e for e in import_report(g)}
    assert {k: e["format"] for k, e in report.items()} == {
        "gemm_alpha_beta": "int8", "int4_blocks": "int4-g32", "uint4_blocks": "int4-g32-asym",
        "uint8_zp128_transposed": "int8"}
    assert all(e["exact"] for e in report.values()), report
    assert "DequantizeLinear" not in g.op_histogram() and "Transpose" not in g.op_histogram()
    x = rng.standard_normal((5, 64)).astype(np.float32)
    expected = run(from_proto(model), {"x": x})["y"]
    for node in g.nodes:
        if node.op == "QLinear":
            node.attrs["activations"] = "fp32"
    np.testing.assert_allclose(run(g, {"x": x})["y"], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_qdq_weights_without_a_qlinear_form_stay_float_and_are_reported():
    """Gemm with transA, and a weight reshaped after its DequantizeLinear: no QLinear form; the
    report says so and fold_constants dequantizes the weights, so the numbers stay the model's."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (4, 8)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.float32(0.01), "s"), numpy_helper.from_array(np.array([8, 4]), "shape")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "s"], ["w"]),
             helper.make_node("Gemm", ["x", "w"], ["h"], name="gemm_transA", transA=1),
             helper.make_node("Reshape", ["w", "shape"], ["w_reshaped"]),
             helper.make_node("MatMul", ["h", "w_reshaped"], ["y"], name="reshaped_weight")]
    graph = helper.make_graph(nodes, "g", [tensor("x", [4, 6])], [tensor("y", [6, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    g = run_pipeline(from_proto(model))[0]
    report = {e["node"]: e for e in import_report(g)}
    assert set(report) == {"gemm_transA", "reshaped_weight"}
    assert all(e["format"] == "fp32" and e["exact"] and "kept float" in e["note"] for e in report.values())
    assert "transA" in report["gemm_transA"]["note"] and "Reshape" in report["reshaped_weight"]["note"]
    assert g.op_histogram() == {"Gemm": 1, "MatMul": 1}
    x = rng.standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_array_equal(run(g, {"x": x})["y"], run(from_proto(model), {"x": x})["y"])


def test_qdq_activations_per_token_on_request_and_refused_on_gpu(qdq_case, tmp_path):
    """--activations dynamic keeps the old per-token scales, and says it differs from onnxruntime;
    the GPU kernels have no file-activation path yet: an error naming the layer and the way out."""
    from qcompile.targets.lower_qlinear_gpu import lower_qlinear_gpu
    from qcompile.targets.plan import LoweringError
    notes = []
    res = build(qdq_case["path"], BuildOptions(out_dir=tmp_path, target="native", dim_bounds={"batch": BATCH},
                                               file_activations=False), progress=lambda p, text: notes.append(text))
    manifest = json.loads(res.manifest.read_text())
    assert [layer["activations"] for layer in manifest["quantized_layers"]] == ["int8 per token"] * 3
    assert any("3 imported layers have static int8 activation scales in the file; they quantize per token at run "
               "time instead (--activations dynamic), which differs from onnxruntime" in n for n in notes), notes
    graph = qdq_case["graph"].copy()
    use_file_activations(graph)
    with pytest.raises(LoweringError, match=r"node 'layer0/MatMul'.*static int8 activations have no GPU kernel"):
        lower_qlinear_gpu(graph)
