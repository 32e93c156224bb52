"""quantize_weights on whole decoders: the quantized graph runs in the reference interpreter and
equals the fp32 graph evaluated with the dequantized weights."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from qcompile.frontend import from_proto
from qcompile.ir import verify
from qcompile.ir.interpret import run
from qcompile.passes import run_pipeline
from qcompile.passes.assign_precision import PrecisionConfig, assign
from qcompile.passes.quantize_weights import quantize_weights
from qcompile.zoo import LlamaConfig, make_llama

CFG = LlamaConfig(hidden_size=128, intermediate_size=256, vocab_size=512)


def prepared(policy: str, model=None, activations: str = "fp32", **kw):
    """fp32 activations isolate the weight formats; int8 is what the kernels run."""
    graph, _ = run_pipeline(from_proto(model or make_llama(CFG)))
    fp32 = graph.copy()
    assign(graph, PrecisionConfig(policy, **kw))
    report = quantize_weights(graph)
    for node in graph.nodes:
        if node.op == "QLinear":
            node.attrs["activations"] = activations
    verify(graph)
    return fp32, graph, report


def dequantized_twin(fp32, quantized):
    """The fp32 graph with every weight replaced by what the quantized graph computes with.
    (The quantized graph has fp32 activations, so only the weights differ.)"""
    twin = fp32.copy()
    qnodes = {n.name: n for n in quantized.nodes}
    for n in twin.nodes:
        q = qnodes[n.name]
        if q.op == "QLinear":
            from qcompile.ir.interpret import run_node
            k, width = quantized.values[q.inputs[1]].shape
            eye = np.eye(k, dtype=np.float32)
            w = run_node(q, [eye] + [quantized.values[x].const for x in q.inputs[1:]])[0]
            twin.values[n.inputs[1]].const = w.reshape(k, width)
        elif q.inputs != n.inputs:
            for i, (a, b) in enumerate(zip(n.inputs, q.inputs)):
                if a != b:
                    twin.values[a].const = quantized.values[b].const
    return twin


@pytest.mark.parametrize("policy, kw", [("mixed", {}), ("mixed", {"middle": "ternary"}), ("int8", {}),
                                        ("int4", {"group_size": 32})])
def test_quantized_graph_equals_dequantized_fp32(policy, kw, rng):
    fp32, graph, report = prepared(policy, **kw)
    ops = {n.op for n in graph.nodes}
    assert "QLinear" in ops and report
    ids = rng.integers(0, CFG.vocab_size, (1, 9)).astype(np.int64)
    got = run(graph, {"input_ids": ids})["logits"]
    expected = run(dequantized_twin(fp32, graph), {"input_ids": ids})["logits"]
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-4 * scale


def test_error_against_fp32_onnxruntime_orders_by_bits(rng):
    """On random weights (a worst case: nothing about them is smooth) the logits' relative error
    grows as formats get coarser: bf16 < int8 < int4 g32 < int4 g128 < ternary."""
    model = make_llama(CFG)
    ids = rng.integers(0, CFG.vocab_size, (1, 16)).astype(np.int64)
    exact = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids})[0]
    errors = []
    for policy, kw in (("bf16", {}), ("int8", {}), ("mixed", {"group_size": 32}), ("mixed", {}),
                       ("mixed", {"middle": "ternary"})):
        got = run(prepared(policy, model, activations="int8", **kw)[1], {"input_ids": ids})["logits"]
        errors.append(float(np.linalg.norm(got - exact) / np.linalg.norm(exact)))
    assert errors == sorted(errors), errors
    assert errors[0] < 0.02 and errors[1] < 0.05, errors


def test_ternary_valued_weights_are_kept_losslessly(rng):
    model = make_llama(CFG)
    for init in model.graph.initializer:       # make every 2-D weight ternary-valued x a scale
        if len(init.dims) == 2:
            from onnx import numpy_helper
            w = numpy_helper.to_array(init)
            t = np.sign(w) * (np.abs(w) > np.abs(w).mean()) * np.float32(0.0625)   # a power of two: also exact in the bf16 embedding
            init.CopyFrom(numpy_helper.from_array(t.astype(np.float32), init.name))
    fp32, graph, report = prepared("int4", model, group_size=32)
    assert any("kept ternary losslessly" in why for _, why in report)
    ids = rng.integers(0, CFG.vocab_size, (1, 7)).astype(np.int64)
    a, b = run(graph, {"input_ids": ids})["logits"], run(fp32, {"input_ids": ids})["logits"]
    assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()


def test_fp16_rounds_every_weight_and_refuses_one_past_its_range():
    fp32, graph, report = prepared("fp16")
    assert {fmt for _, fmt in report} == {"fp16"} and len(report) >= 8
    for n in graph.nodes:
        if n.attrs.get("qcompile.precision") == "fp16":
            w = graph.values[n.inputs[0 if n.op == "Gather" else 1]].const
            np.testing.assert_array_equal(w, w.astype(np.float16).astype(np.float32))
    big = from_proto(make_llama(CFG))
    graph, _ = run_pipeline(big)
    head = next(n for n in graph.nodes if n.op == "MatMul")
    graph.values[head.inputs[1]].const = graph.values[head.inputs[1]].const * 1e6
    assign(graph, PrecisionConfig("fp16"))
    from qcompile.passes.assign_precision import PrecisionError
    with pytest.raises(PrecisionError, match=rf"(?s)node '{head.name}'.*does not fit fp16 \(at most 65504\).*use bf16"):
        quantize_weights(graph)
