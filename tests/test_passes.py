"""Pass infrastructure and the first passes: numerics preserved, structure as intended."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.errors import VerifyError
from qcompile.frontend import from_proto
from qcompile.ir import Graph, verify
from qcompile.ir.dtypes import FP32, INT64
from qcompile.ir.interpret import run
from qcompile.passes import PASSES, PIPELINES, Phase, get_pass, register_pass, run_pipeline
from qcompile.zoo import BertConfig, LlamaConfig, make_bert, make_llama


def graph_with_constant_subgraph() -> Graph:
    """y = x @ (W^T * 2) + unused branch; the weight math is foldable, the branch is dead."""
    g = Graph("fold")
    g.add_input("x", FP32, ("n", 3))
    w = g.add_const("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    two = g.add_const("two", np.array(2.0, np.float32))
    for name, shape in (("wt", (3, 2)), ("w2", (3, 2)), ("y", ("n", 2)), ("dead", ("n", 3)),
                        ("shape", (2,)), ("s_out", (2,))):
        g.add_value(name, INT64 if name.startswith("s") else FP32, shape)
    g.add_node("Transpose", [w.name], ["wt"], {"perm": [1, 0]}, name="t")
    g.add_node("Mul", ["wt", two.name], ["w2"], name="scale")
    g.add_node("MatMul", ["x", "w2"], ["y"], name="mm")
    g.add_node("Neg", ["x"], ["dead"], name="unused")
    g.add_node("Shape", ["w2"], ["shape"], name="shape_of_const")
    g.add_node("Identity", ["shape"], ["s_out"], name="id")
    g.outputs = ["y", "s_out"]
    return g


def test_fold_constants_evaluates_constant_subgraphs():
    g = graph_with_constant_subgraph()
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    before = run(g, {"x": x})
    folded = get_pass("fold_constants").fn(g.copy())
    assert [n.name for n in folded.nodes] == ["mm", "unused"]
    np.testing.assert_array_equal(folded.values["w2"].const, np.arange(6, dtype=np.float32).reshape(2, 3).T * 2)
    np.testing.assert_array_equal(folded.values["s_out"].const, [3, 2])
    after = run(folded, {"x": x})
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


def test_eliminate_dead_drops_unused_nodes_and_values():
    g = get_pass("eliminate_dead").fn(graph_with_constant_subgraph())
    assert "unused" not in {n.name for n in g.nodes}
    assert "dead" not in g.values
    verify(g)


def test_fold_constants_does_not_inflate_the_model():
    g = Graph("big")
    g.add_input("x", FP32, (1,))
    shape = g.add_const("shape", np.array([1024, 1024], np.int64))
    g.add_value("zeros", FP32, (1024, 1024))
    g.add_value("y", FP32, (1024, 1024))
    g.add_node("ConstantOfShape", [shape.name], ["zeros"], name="cos")
    g.add_node("Add", ["zeros", "x"], ["y"], name="add")
    g.outputs = ["y"]
    g = get_pass("fold_constants").fn(g)
    assert [n.op for n in g.nodes] == ["ConstantOfShape", "Add"]


def test_infer_shapes_keeps_symbolic_dims():
    g = from_proto(make_llama(LlamaConfig()))
    for v in g.values.values():
        if not v.is_const and v.name not in g.inputs:
            v.shape = None
    g = get_pass("infer_shapes").fn(g)
    assert g.values["logits"].shape == ("batch", "seq", 256)


@pytest.mark.parametrize("make", [lambda: make_llama(LlamaConfig()), lambda: make_bert(BertConfig())])
def test_default_pipeline_preserves_numerics(make, tmp_path):
    g = from_proto(make())
    out, report = run_pipeline(g, "default", dump_ir=tmp_path, verify_each=True)
    assert [r.name for r in report.records] == [p for ph in PIPELINES["default"] for p in ph.passes]
    dumps = sorted(p.name for p in tmp_path.iterdir())
    assert dumps[0] == "000_input.txt" and len(dumps) == len(report.records) + 1
    assert dumps[1] == "001_simplify_infer_shapes.txt"
    assert "pass" in report.table().splitlines()[0]
    rng = np.random.default_rng(1)
    feeds = {}
    for name in g.inputs:
        v = g.values[name]
        shape = [2 if d == "batch" else 5 if isinstance(d, str) else d for d in v.shape]
        feeds[name] = rng.integers(0, 2 if "mask" in name or "type" in name else 64, shape).astype(np.int64)
    a, b = run(g, feeds), run(out, feeds)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_verify_after_each_pass_catches_a_broken_pass(monkeypatch):
    @register_pass("break_graph_for_test")
    def break_graph(g):
        """Deletes the first node without rewiring its users."""
        g.nodes = g.nodes[1:]
        return g

    try:
        monkeypatch.setitem(PIPELINES, "broken", (Phase("oops", ("break_graph_for_test",)),))
        g = from_proto(make_llama(LlamaConfig()))
        run_pipeline(g, "broken", verify_each=False)     # unverified: silently broken
        with pytest.raises(VerifyError, match="dangling") as info:
            run_pipeline(g, "broken", verify_each=True)
        assert "break_graph_for_test" in info.value.phase
        monkeypatch.setenv("QCOMPILE_DEBUG", "1")       # debug mode turns verification on
        with pytest.raises(VerifyError):
            run_pipeline(g, "broken")
    finally:
        PASSES.pop("break_graph_for_test")


def test_pipeline_leaves_its_input_untouched():
    g = graph_with_constant_subgraph()
    before = [n.name for n in g.nodes]
    run_pipeline(g)
    assert [n.name for n in g.nodes] == before


def test_unknown_names_are_reported():
    with pytest.raises(KeyError, match="unknown pipeline 'nope'"):
        run_pipeline(graph_with_constant_subgraph(), "nope")
    with pytest.raises(KeyError, match="unknown pass"):
        get_pass("nope")
