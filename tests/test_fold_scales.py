"""fold_scales: per-channel Mul/Div scales folded into the adjacent linear weights, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.ir import dtypes, interpret
from qcompile.ir.graph import Graph
from qcompile.passes import get_pass

RNG = np.random.default_rng(3)
K, N = 16, 8


def _graph(build) -> Graph:
    g = Graph("t")
    g.add_input("x", dtypes.FP32, ("batch", K))
    build(g)
    return g


def _value(g, name, n=N):
    return g.add_value(name, dtypes.FP32, ("batch", n)).name


def _const(g, name, shape):
    return g.add_const(name, (RNG.standard_normal(shape) + 2).astype(np.float32)).name


def _check(g: Graph, folded_ops: set[str]):
    x = RNG.standard_normal((3, K)).astype(np.float32)
    before = interpret.run(g, {"x": x})
    ops_before = [n.op for n in g.nodes]
    out = get_pass("fold_scales").fn(g)
    after = interpret.run(out, {"x": x})
    for name in before:
        np.testing.assert_allclose(after[name], before[name], rtol=1e-5, atol=1e-5)
    ops_after = [n.op for n in out.nodes]
    assert len(ops_after) == len(ops_before) - len(folded_ops) if folded_ops else ops_after == ops_before
    return out


def test_input_scale_shared_by_two_layers():
    def build(g):
        c = _const(g, "c", (K,))
        g.add_node("Mul", ["x", c], [g.add_value("xs", dtypes.FP32, ("batch", K)).name])
        g.add_node("MatMul", ["xs", _const(g, "w1", (K, N))], [_value(g, "y1")])
        g.add_node("Gemm", ["xs", _const(g, "w2", (N, K))], [_value(g, "y2")], {"transB": 1})
        g.outputs = ["y1", "y2"]
    out = _check(_graph(build), {"Mul"})
    assert all(n.inputs[0] == "x" for n in out.nodes)


@pytest.mark.parametrize("op,shape", [("Div", (K,)), ("Mul", ()), ("Mul", (1, K))])
def test_input_scale_forms(op, shape):
    def build(g):
        c = _const(g, "c", shape)
        inputs = ["x", c] if op == "Div" else [c, "x"]        # Mul's constant on either side
        g.add_node(op, inputs, [g.add_value("xs", dtypes.FP32, ("batch", K)).name])
        g.add_node("MatMul", ["xs", _const(g, "w", (K, N))], [_value(g, "y")])
        g.outputs = ["y"]
    _check(_graph(build), {op})


def test_output_scale():
    def build(g):
        g.add_node("MatMul", ["x", _const(g, "w", (K, N))], [_value(g, "y")])
        g.add_node("Mul", ["y", _const(g, "c", (N,))], [_value(g, "z")])
        g.add_node("Relu", ["z"], [_value(g, "r")])
        g.outputs = ["r"]
    out = _check(_graph(build), {"Mul"})
    assert [n.op for n in out.nodes] == ["MatMul", "Relu"] and out.nodes[0].outputs == ["z"]


def test_not_folded_when_someone_else_reads_the_scaled_value():
    def build(g):
        c = _const(g, "c", (K,))
        g.add_node("Mul", ["x", c], [g.add_value("xs", dtypes.FP32, ("batch", K)).name])
        g.add_node("MatMul", ["xs", _const(g, "w", (K, N))], [_value(g, "y")])
        g.add_node("Relu", ["xs"], [g.add_value("r", dtypes.FP32, ("batch", K)).name])
        g.outputs = ["y", "r"]
    _check(_graph(build), set())


def test_not_folded_when_the_scale_is_not_per_channel():
    def build(g):
        c = _const(g, "c", (3, K))                          # per row: cannot move into the weight
        g.add_node("Mul", ["x", c], [g.add_value("xs", dtypes.FP32, ("batch", K)).name])
        g.add_node("MatMul", ["xs", _const(g, "w", (K, N))], [_value(g, "y")])
        g.outputs = ["y"]
    g = _graph(build)
    g.values["x"].shape = (3, K)
    _check(g, set())


def test_a_shared_weight_is_copied_not_changed():
    def build(g):
        w = _const(g, "w", (K, N))
        g.add_node("Mul", ["x", _const(g, "c", (K,))], [g.add_value("xs", dtypes.FP32, ("batch", K)).name])
        g.add_node("MatMul", ["xs", w], [_value(g, "y1")])
        g.add_node("MatMul", ["x", w], [_value(g, "y2")])
        g.outputs = ["y1", "y2"]
    _check(_graph(build), {"Mul"})
