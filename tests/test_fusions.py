"""Canonicalizing fusions: decomposed attention (as exporters write it) -> one qcompile.Attention
node, decomposed RMSNorm -> RMSNormalization; the fused graphs, their reference semantics and
their kernels all equal the decomposed graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qcompile.frontend import from_proto
from qcompile.ir.interpret import run
from qcompile.passes import get_pass, run_pipeline
from qcompile.targets.plan import make_plan
from qcompile.targets.tvm.jit import run_plan
from qcompile.zoo import LlamaConfig, make_llama

from .helpers import llama_feeds, ort_run
from .test_lowering import compile_plan


def sdpa_model(heads=9, kv_heads=3, head_dim=64, split_scale=True, mask=True, repeat=True, v_transposed=False,
               mask_first=False):
    """Grouped-query SDPA as torch's exporter decomposes it: sqrt(scale) on q and on kᵀ, repeat_kv
    through Unsqueeze/Expand/Reshape, an additive mask, Softmax, MatMul with v."""
    f = TensorProto.FLOAT
    s = head_dim ** -0.25
    nodes, inits = [], [helper.make_tensor("two", TensorProto.INT64, [1], [2]),
                        helper.make_tensor("rep", TensorProto.INT64, [5], [1, 1, heads // kv_heads, 1, 1]),
                        helper.make_tensor("heads", TensorProto.INT64, [4], [0, heads, -1, head_dim]),
                        helper.make_tensor("s", f, [], [s if split_scale else head_dim ** -0.5])]
    kv_h = kv_heads if repeat else heads

    def rep(x):
        if not repeat:
            return x
        nodes.extend([helper.make_node("Unsqueeze", [x, "two"], [f"{x}_u"]),
                      helper.make_node("Expand", [f"{x}_u", "rep"], [f"{x}_e"]),
                      helper.make_node("Reshape", [f"{x}_e", "heads"], [f"{x}_r"])])
        return f"{x}_r"

    kt = "kt"
    nodes.append(helper.make_node("Transpose", [rep("k")], ["kt"], perm=[0, 1, 3, 2]))
    if split_scale:
        nodes += [helper.make_node("Mul", ["q", "s"], ["qs"]), helper.make_node("Mul", ["kt", "s"], ["kts"]),
                  helper.make_node("MatMul", ["qs", "kts"], ["scores"])]
    else:
        nodes += [helper.make_node("MatMul", ["q", kt], ["qk"]), helper.make_node("Mul", ["qk", "s"], ["scores"])]
    logits = "scores"
    if mask:
        nodes.append(helper.make_node("Add", ["mask", "scores"] if mask_first else ["scores", "mask"], ["masked"]))
        logits = "masked"
    nodes.append(helper.make_node("Softmax", [logits], ["probs"], axis=-1))
    v = rep("v")
    if v_transposed:
        nodes.append(helper.make_node("Transpose", [v], ["vt"], perm=[0, 1, 3, 2]))
        v = "vt"
    nodes.append(helper.make_node("MatMul", ["probs", v], ["y"]))
    inputs = [helper.make_tensor_value_info("q", f, [1, heads, "s", head_dim]),
              helper.make_tensor_value_info("k", f, [1, kv_h, "t", head_dim]),
              helper.make_tensor_value_info("v", f, [1, kv_h, "t", head_dim])]
    if mask:
        inputs.append(helper.make_tensor_value_info("mask", f, [1, 1, "s", "t"]))
    graph = helper.make_graph(nodes, "sdpa", inputs, [helper.make_tensor_value_info("y", f, [1, heads, "s", head_dim])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def feeds_for(rng, s, t, heads=9, kv_heads=3, head_dim=64, mask=True):
    feeds = {"q": rng.standard_normal((1, heads, s, head_dim)).astype(np.float32),
             "k": rng.standard_normal((1, kv_heads, t, head_dim)).astype(np.float32),
             "v": rng.standard_normal((1, kv_heads, t, head_dim)).astype(np.float32)}
    if mask:   # causal for queries at the end of the keys, with the finite minimum exporters use
        allowed = np.arange(t)[None, :] <= np.arange(t - s, t)[:, None]
        feeds["mask"] = np.where(allowed, 0, np.finfo(np.float32).min).astype(np.float32)[None, None]
    return feeds


def ops(graph):
    return graph.op_histogram()


@pytest.mark.parametrize("split_scale, mask, mask_first", [(True, True, False), (False, True, True),
                                                          (True, False, False)])
def test_sdpa_is_fused_and_equals_onnxruntime(rng, tmp_path, split_scale, mask, mask_first):
    model = sdpa_model(split_scale=split_scale, mask=mask, mask_first=mask_first)
    graph, _ = run_pipeline(from_proto(model))
    assert ops(graph) == {"qcompile.Attention": 1}, ops(graph)      # no Expand, Transpose, Softmax left
    node = graph.nodes[0]
    assert node.inputs[:3] == ["q", "k", "v"] and node.attrs["scale"] == pytest.approx(64 ** -0.5, rel=1e-6)
    plan = make_plan(graph, {"s": 8, "t": 40})
    _, module = compile_plan(plan)
    path = _save(model, tmp_path)
    for s, t in ((1, 1), (1, 37), (5, 9), (8, 40)):
        feeds = feeds_for(rng, s, t, mask=mask)
        want = ort_run(path, feeds)["y"]
        np.testing.assert_allclose(run(graph, feeds)["y"], want, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(run_plan(plan, module, feeds)["y"], want, rtol=1e-4, atol=1e-5)


def _save(model, folder):
    path = folder / f"{model.graph.name}.onnx"
    onnx.save(model, str(path))
    return path


def test_multi_head_without_grouping_is_fused(rng, tmp_path):
    model = sdpa_model(heads=4, kv_heads=4, repeat=False)
    graph, _ = run_pipeline(from_proto(model))
    assert ops(graph) == {"qcompile.Attention": 1}
    feeds = feeds_for(rng, 3, 6, heads=4, kv_heads=4)
    np.testing.assert_allclose(run(graph, feeds)["y"], ort_run(_save(model, tmp_path), feeds)["y"], rtol=1e-5, atol=1e-5)


def test_what_is_not_attention_is_left_alone():
    graph, _ = run_pipeline(from_proto(sdpa_model(v_transposed=True)))     # probs x vᵀ: not attention
    assert "qcompile.Attention" not in ops(graph) and ops(graph)["Softmax"] == 1


@pytest.mark.parametrize("kv", [False, True])
def test_llama_layers_fuse_exactly(rng, kv):
    cfg = LlamaConfig()
    graph, _ = run_pipeline(from_proto(make_llama(cfg, with_kv_cache=kv)), "simplify")
    fused = get_pass("fuse_attention").fn(graph.copy())
    fused, _ = run_pipeline(fused, "simplify")
    assert ops(fused)["qcompile.Attention"] == cfg.num_layers
    assert "Softmax" not in ops(fused) and "Expand" not in ops(fused)
    feeds = llama_feeds(rng, cfg, seq=4, past=3 if kv else None)
    want, got = run(graph, feeds), run(fused, feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)


def rms_model(style: str, eps=1e-6, gamma_len=8, axes=(-1,)):
    f = TensorProto.FLOAT
    inits = [helper.make_tensor("two", f, [], [2.0]), helper.make_tensor("eps", f, [], [eps]),
             helper.make_tensor("axes", TensorProto.INT64, [len(axes)], list(axes)),
             helper.make_tensor("gamma", f, [gamma_len], np.linspace(0.5, 1.5, gamma_len).tolist())]
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]) if style != "mul" else helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]), helper.make_node("Sqrt", ["mse"], ["rms"])]
    if style == "div":
        nodes.append(helper.make_node("Div", ["x", "rms"], ["normed"]))
    else:
        nodes += [helper.make_node("Reciprocal", ["rms"], ["inv"]), helper.make_node("Mul", ["inv", "x"], ["normed"])]
    nodes.append(helper.make_node("Mul", ["normed", "gamma"], ["y"]))
    graph = helper.make_graph(nodes, "rms", [helper.make_tensor_value_info("x", f, [2, "s", 8])],
                              [helper.make_tensor_value_info("y", f, [2, "s", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("style", ["pow", "mul", "div"])
def test_rms_norm_is_fused(rng, tmp_path, style):
    model = rms_model(style)
    graph, _ = run_pipeline(from_proto(model))
    assert ops(graph) == {"RMSNormalization": 1}, ops(graph)
    assert graph.nodes[0].attrs["epsilon"] == pytest.approx(1e-6)
    feeds = {"x": rng.standard_normal((2, 5, 8)).astype(np.float32)}
    np.testing.assert_allclose(run(graph, feeds)["y"], ort_run(_save(model, tmp_path), feeds)["y"], rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("kw", [{"axes": (1,)}, {"gamma_len": 1}])
def test_what_is_not_rms_norm_is_left_alone(kw):
    graph, _ = run_pipeline(from_proto(rms_model("pow", **kw)))
    assert "RMSNormalization" not in ops(graph)


def test_llama_norms_fuse_exactly(rng):
    cfg = LlamaConfig()
    graph, _ = run_pipeline(from_proto(make_llama(cfg)), "simplify")
    fused = get_pass("fuse_rms_norm").fn(graph.copy())
    fused, _ = run_pipeline(fused, "simplify")
    assert ops(fused)["RMSNormalization"] == 2 * cfg.num_layers + 1
    assert not {"Pow", "ReduceMean", "Sqrt", "Reciprocal"} & set(ops(fused))
    feeds = {"input_ids": rng.integers(0, cfg.vocab_size, (2, 5)).astype(np.int64)}
    np.testing.assert_allclose(run(fused, feeds)["logits"], run(graph, feeds)["logits"], rtol=1e-6, atol=1e-6)


def rotary_model(swap_operands=False, half=None):
    """x * cos + rotate_half(x) * sin, as HF's apply_rotary_pos_emb exports (x [b, h, s, 16])."""
    f, d = TensorProto.FLOAT, 16
    h = half or d // 2
    inits = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
             (("zero", 0), ("half", h), ("end", np.iinfo(np.int64).max), ("last", 3))]
    mul_cos = ["cos", "x"] if swap_operands else ["x", "cos"]
    nodes = [helper.make_node("Mul", mul_cos, ["xc"]),
             helper.make_node("Slice", ["x", "zero", "half", "last"], ["first"]),
             helper.make_node("Slice", ["x", "half", "end", "last"], ["second"]),
             helper.make_node("Neg", ["second"], ["neg"]),
             helper.make_node("Concat", ["neg", "first"], ["rot"], axis=-1),
             helper.make_node("Mul", ["rot", "sin"], ["rs"]),
             helper.make_node("Add", ["rs", "xc"] if swap_operands else ["xc", "rs"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", f, [1, 3, "s", d]),
              helper.make_tensor_value_info("cos", f, [1, 1, "s", d]),
              helper.make_tensor_value_info("sin", f, [1, 1, "s", d])]
    graph = helper.make_graph(nodes, "rotary", inputs, [helper.make_tensor_value_info("y", f, [1, 3, "s", d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("swap", [False, True])
def test_rotary_is_fused_and_equals_onnxruntime(rng, tmp_path, swap):
    model = rotary_model(swap)
    graph, _ = run_pipeline(from_proto(model))
    assert ops(graph) == {"qcompile.Rotary": 1}, ops(graph)
    plan = make_plan(graph, {"s": 8})
    _, module = compile_plan(plan)
    path = _save(model, tmp_path)
    for s in (1, 5):
        angles = rng.uniform(0, 6, (1, 1, s, 8)).astype(np.float32)
        feeds = {"x": rng.standard_normal((1, 3, s, 16)).astype(np.float32),
                 "cos": np.cos(np.concatenate([angles, angles], -1)), "sin": np.sin(np.concatenate([angles, angles], -1))}
        want = ort_run(path, feeds)["y"]
        np.testing.assert_allclose(run(graph, feeds)["y"], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(run_plan(plan, module, feeds)["y"], want, rtol=1e-5, atol=1e-6)


def test_a_rotation_that_is_not_half_is_left_alone():
    graph, _ = run_pipeline(from_proto(rotary_model(half=4)))
    assert "qcompile.Rotary" not in ops(graph)


@pytest.mark.parametrize("kv", [False, True])
def test_fold_norms_moves_every_gamma_into_the_weights(rng, kv):
    """fold_norms (issue 7): each RMSNorm's gamma goes into the q/k/v, gate/up and LM head weights;
    the norms become scale-free and the model computes the same function."""
    cfg = LlamaConfig()
    graph, _ = run_pipeline(from_proto(make_llama(cfg, with_kv_cache=kv)))
    folded = get_pass("fold_norms").fn(graph.copy())
    norms = [n for n in folded.nodes if n.op == "RMSNormalization"]
    assert len(norms) == 2 * cfg.num_layers + 1
    assert all(np.all(folded.values[n.inputs[1]].const == 1) for n in norms)
    feeds = llama_feeds(rng, cfg, seq=5, past=2 if kv else None)
    want, got = run(graph, feeds), run(folded, feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5 * np.abs(want[name]).max())


def test_fold_norms_leaves_a_norm_read_by_other_ops_alone():
    """A norm whose output also feeds a non-linear op keeps its gamma (that reader needs it)."""
    f = TensorProto.FLOAT
    inits = [helper.make_tensor("gamma", f, [8], np.linspace(0.5, 2, 8).tolist()),
             helper.make_tensor("w", f, [8, 4], np.ones(32).tolist())]
    nodes = [helper.make_node("RMSNormalization", ["x", "gamma"], ["n"], axis=-1),
             helper.make_node("MatMul", ["n", "w"], ["y"]), helper.make_node("Relu", ["n"], ["r"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [2, 8])],
                              [helper.make_tensor_value_info("y", f, [2, 4]), helper.make_tensor_value_info("r", f, [2, 8])],
                              inits)
    g, _ = run_pipeline(from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])))
    folded = get_pass("fold_norms").fn(g.copy())
    norm = next(n for n in folded.nodes if n.op == "RMSNormalization")
    assert not np.all(folded.values[norm.inputs[1]].const == 1)
