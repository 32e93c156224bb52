"""Constant weights of linear layers, as the weight-rewriting passes (fold_norms, rotate) see them."""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node


def k_axis(node: Node) -> int | None:
    """Which axis of the node's weight is K (the reduction axis), or None if not a foldable linear."""
    if node.op == "MatMul" and not node.domain:
        return 0
    if node.op == "Gemm" and not node.domain and not node.attrs.get("transA"):
        return 1 if node.attrs.get("transB") else 0
    return None


def const_weight(g: Graph, node: Node) -> np.ndarray | None:
    """The constant weight of a MatMul/Gemm, or None."""
    if k_axis(node) is None or len(node.inputs) < 2:
        return None
    return g.values[node.inputs[1]].const


def set_const_input(g: Graph, node: Node, index: int, value: np.ndarray, readers: dict[str, int],
                    suffix: str) -> None:
    """Give node's constant input `index` a new value: in place when node is its only reader,
    else as a copy of its own (the other readers keep the old one)."""
    name = node.inputs[index]
    if readers.get(name, 0) > 1:
        node.inputs[index] = g.add_const(f"{name}_{suffix}", value).name
    else:
        g.values[name].const = value


def readers_of(g: Graph) -> dict[str, int]:
    return {name: len(nodes) for name, nodes in g.consumers().items()}
