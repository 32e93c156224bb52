"""IR construction, verifier, text form, networkx analyses and QuantSpec."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.errors import VerifyError
from qcompile.frontend import from_proto
from qcompile.ir import Graph, QuantSpec, dtype, to_text, verify
from qcompile.ir.dtypes import FP32, INT64, from_onnx
from qcompile.ir.interpret import run
from qcompile.zoo import LlamaConfig, make_llama


def small_graph() -> Graph:
    g = Graph("small")
    g.add_input("x", FP32, ("batch", 4))
    w = g.add_const("w", np.arange(12, dtype=np.float32).reshape(4, 3))
    g.add_value("h", FP32, ("batch", 3))
    g.add_value("y", FP32, ("batch", 3))
    g.add_node("MatMul", ["x", w.name], ["h"], name="mm")
    g.add_node("Relu", ["h"], ["y"], name="relu")
    g.outputs = ["y"]
    return g


def test_small_graph_verifies_and_runs():
    g = small_graph()
    verify(g)
    x = np.array([[1, -1, 2, 0.5]], np.float32)
    expected = np.maximum(x @ np.arange(12, dtype=np.float32).reshape(4, 3), 0)
    np.testing.assert_array_equal(run(g, {"x": x})["y"], expected)


def test_dtypes_map_both_ways():
    for name in ("fp32", "fp16", "bf16", "int8", "uint8", "int32", "int64", "bool", "int4", "uint4"):
        dt = dtype(name)
        assert from_onnx(dt.onnx) is dt
    assert dtype("ternary").bits == 2 and dtype("int4").bits == 4
    with pytest.raises(ValueError, match="unknown dtype"):
        dtype("fp12")


@pytest.mark.parametrize("breakage, message", [
    (lambda g: g.nodes[0].inputs.__setitem__(1, "ghost"), "dangling"),
    (lambda g: g.nodes.reverse(), "used before"),
    (lambda g: g.nodes[1].outputs.__setitem__(0, "h"), "produced twice"),
    (lambda g: g.outputs.append("nowhere"), "never produced"),
    (lambda g: setattr(g.values["w"], "shape", (4, 4)), "holds shape"),
    (lambda g: setattr(g.values["w"], "dtype", INT64), "holds float32"),
])
def test_verifier_names_the_broken_invariant(breakage, message):
    g = small_graph()
    breakage(g)
    with pytest.raises(VerifyError, match=message):
        verify(g)


def test_verifier_finds_cycles():
    g = small_graph()
    g.nodes[0].inputs[0] = "y"     # mm reads relu's output, relu reads mm's
    with pytest.raises(VerifyError, match="cycle"):
        verify(g)


def test_verifier_checks_operand_types():
    g = small_graph()
    g.add_input("i", INT64, (1,))
    g.values["h2"] = g.values["h"].__class__("h2", FP32, ("batch", 3))
    g.add_node("Add", ["h", "i"], ["h2"], name="bad_add")
    with pytest.raises(VerifyError, match="mix element types"):
        verify(g)


def test_text_form_is_stable_and_readable():
    g = small_graph()
    text = to_text(g)
    assert text == to_text(g.copy())
    assert "  input %x: fp32[batch,4]" in text
    assert "  %h: fp32[batch,3] = MatMul(%x, %w)  # mm" in text
    assert "  output %y: fp32[batch,3]" in text
    # a constant is summarized by shape and content hash; equal content gives equal text
    assert "const %w: fp32[4,3] = <12 elems sha256:" in text


def test_text_form_identical_across_imports():
    model = make_llama(LlamaConfig())
    assert to_text(from_proto(model)) == to_text(from_proto(model))


def test_topo_sort_restores_order_and_keeps_independent_order():
    g = small_graph()
    g.nodes.reverse()
    g.topo_sort()
    assert [n.name for n in g.nodes] == ["mm", "relu"]
    verify(g)


def test_networkx_view_has_one_edge_per_read():
    g = from_proto(make_llama(LlamaConfig(num_layers=1)))
    nxg = g.to_networkx()
    reads = sum(1 for n in g.nodes for name in n.inputs if name and name in g.producers())
    assert nxg.number_of_edges() == reads
    assert nxg.number_of_nodes() == len(g.nodes)


def test_symbolic_dims_survive_import():
    g = from_proto(make_llama(LlamaConfig()))
    assert g.values["input_ids"].shape == ("batch", "seq")
    assert g.values["logits"].shape == ("batch", "seq", 256)


def test_quant_spec_per_group_dequantize():
    q = np.array([[1, -2, 3, -4], [5, 6, -7, 8]], np.int8)
    spec = QuantSpec("int4", 4, "per_group", axis=1, group_size=2,
                     scales=np.array([[0.5, 2.0], [1.0, 0.25]], np.float32))
    expected = np.array([[0.5, -1.0, 6, -8], [5, 6, -1.75, 2]], np.float32)
    np.testing.assert_array_equal(spec.dequantize(q), expected)
    assert spec.symmetric and spec.describe() == "int4 4b per_group axis=1 g=2 sym"


def test_quant_spec_per_channel_with_zero_points():
    q = np.array([[10, 12], [3, 1]], np.uint8)
    spec = QuantSpec("uint8", 8, "per_channel", axis=0, scales=np.array([0.1, 2.0], np.float32),
                     zero_points=np.array([10, 2], np.uint8))
    np.testing.assert_allclose(spec.dequantize(q), [[0.0, 0.2], [2.0, -2.0]], rtol=1e-6)
    assert not spec.symmetric


def test_quant_spec_rejects_incomplete_specs():
    with pytest.raises(ValueError, match="group_size"):
        QuantSpec("int4", 4, "per_group", axis=1)
    with pytest.raises(ValueError, match="unknown quant format"):
        QuantSpec("int3", 3)


def test_quant_spec_in_text_form():
    g = small_graph()
    g.values["w"].quant = QuantSpec("int8", 8, "per_channel", axis=1, scales=np.ones(3, np.float32))
    assert "quant(int8 8b per_channel axis=1 sym)" in to_text(g)


def test_verifier_checks_declared_output_shapes_and_types():
    g = small_graph()
    g.values["h"].shape = ("batch", 4)          # MatMul of [batch,4] x [4,3] gives [batch,3]
    with pytest.raises(VerifyError, match=r"declared \['batch', 4\] but the op computes \['batch', 3\]"):
        verify(g)
    g = small_graph()
    g.values["y"].dtype = INT64
    with pytest.raises(VerifyError, match="typed int64 but the op produces fp32"):
        verify(g)
