"""Quantized ONNX ops in the interpreter against onnxruntime: Q/DQ, MatMulInteger, MatMulNBits."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcompile.frontend import from_proto
from qcompile.ir.interpret import run


def run_both(nodes, inputs, outputs, initializers, feeds, opsets=(("", 21),)):
    graph = helper.make_graph(nodes, "q", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = sess.run(None, feeds)
    ours = run(from_proto(model), feeds)
    return [ours[o.name] for o in outputs], theirs


@pytest.mark.parametrize("zp_type, axis", [(TensorProto.UINT8, None), (TensorProto.INT8, 1), (TensorProto.INT8, 0)])
def test_quantize_dequantize_exact(rng, zp_type, axis):
    x = (rng.standard_normal((4, 6)) * 3).astype(np.float32)
    n = 1 if axis is None else x.shape[axis]
    scale = (rng.random(n) * 0.1 + 0.01).astype(np.float32).reshape(() if axis is None else (n,))
    zp_np = np.uint8 if zp_type == TensorProto.UINT8 else np.int8
    zp = rng.integers(0, 10, scale.shape).astype(zp_np)
    attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], **attrs),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], **attrs)]
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "zp")]
    ours, theirs = run_both(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
                            [helper.make_tensor_value_info("q", zp_type, [4, 6]),
                             helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 6])], inits, {"x": x})
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


def test_blocked_dequantize_int4(rng):
    q = rng.integers(-8, 8, (4, 8)).astype(np.int8)
    scale = (rng.random((4, 2)) + 0.5).astype(np.float32)
    import ml_dtypes
    q4 = numpy_helper.from_array(q.astype(ml_dtypes.int4), "q")
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=1, block_size=4)]
    ours, theirs = run_both(nodes, [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                            [q4, numpy_helper.from_array(scale, "s")], {})
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[0], q * np.repeat(scale, 4, axis=1))


@pytest.mark.parametrize("a_max", [255, 64])
def test_matmul_integer_exact(rng, a_max):
    """Exact integer math. onnxruntime is compared only where no int16 pair sum can saturate:
    on AVX2-only CPUs its u8 x s8 kernel (vpmaddubsw) saturates for large operands."""
    a = rng.integers(0, a_max, (3, 16)).astype(np.uint8)
    b = rng.integers(-128, 127, (16, 5)).astype(np.int8)
    nodes = [helper.make_node("MatMulInteger", ["a", "b", "azp"], ["y"])]
    inits = [numpy_helper.from_array(b, "b"), numpy_helper.from_array(np.array(7, np.uint8), "azp")]
    ours, theirs = run_both(nodes, [helper.make_tensor_value_info("a", TensorProto.UINT8, [3, 16])],
                            [helper.make_tensor_value_info("y", TensorProto.INT32, [3, 5])], inits, {"a": a})
    np.testing.assert_array_equal(ours[0], (a.astype(np.int64) - 7) @ b.astype(np.int64))
    if a_max <= 128:
        np.testing.assert_array_equal(ours[0], theirs[0])


@pytest.mark.parametrize("k, block, with_zp, bias", [(64, 32, False, False), (64, 16, True, True),
                                                     (48, 32, True, False), (128, 128, False, True)])
def test_matmul_nbits_int4(rng, k, block, with_zp, bias):
    n, m = 6, 3
    n_blocks = -(-k // block)
    q = rng.integers(0, 16, (n, n_blocks * block)).astype(np.uint8)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, n_blocks, block // 2)
    scales = (rng.random((n, n_blocks)) * 0.1 + 0.01).astype(np.float32)
    inits = [numpy_helper.from_array(packed, "b"), numpy_helper.from_array(scales.reshape(-1), "s")]
    names = ["a", "b", "s"]
    zp = np.full((n, n_blocks), 8)
    if with_zp:
        zp = rng.integers(0, 16, (n, n_blocks))
        padded = np.zeros((n, -(-n_blocks // 2) * 2), np.uint8)
        padded[:, :n_blocks] = zp
        inits.append(numpy_helper.from_array((padded[:, 0::2] | (padded[:, 1::2] << 4)).reshape(-1), "zp"))
        names.append("zp")
    if bias:
        bias_v = rng.standard_normal(n).astype(np.float32)
        inits.append(numpy_helper.from_array(bias_v, "bias"))
        names += [""] * (5 - len(names)) + ["bias"]
    node = helper.make_node("MatMulNBits", names, ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block)
    a = rng.standard_normal((m, k)).astype(np.float32)
    ours, theirs = run_both([node], [helper.make_tensor_value_info("a", TensorProto.FLOAT, [m, k])],
                            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], inits, {"a": a},
                            opsets=(("", 21), ("com.microsoft", 1)))
    w = (q[:, :k] - np.repeat(zp, block, axis=1)[:, :k]) * np.repeat(scales, block, axis=1)[:, :k]
    expected = a.astype(np.float64) @ w.T + (bias_v if bias else 0)
    np.testing.assert_allclose(ours[0], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-4, atol=1e-4)
