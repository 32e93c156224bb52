"""fuse_rms_norm: RMSNorm as exporters decompose it -> one RMSNormalization (ONNX opset 23) node.

Matched, with the gamma Mul's operands in either order and rsqrt written as Reciprocal(Sqrt) or
as a Div by the Sqrt:

    Mul(gamma, Mul(x, Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2), axes=[-1], keepdims=1), eps)))))

The fused node replaces the final Mul and keeps its output; the rest goes dead.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node
from .registry import register_pass


def _const(g: Graph, name: str | None):
    return g.values[name].const if name else None


def _other(node: Node, name: str) -> str | None:
    """The operand of a binary node that is not `name` (None when neither or both are)."""
    a, b = node.inputs[0], node.inputs[1]
    return b if a == name and b != name else a if b == name and a != name else None


def _inverse_rms(g: Graph, producers: dict[str, Node], name: str, x: str) -> float | None:
    """eps when `name` is Reciprocal(Sqrt(Add(ReduceMean(Pow(x, 2), [-1]), eps))), else None."""
    node = producers.get(name)
    if node is None or node.op != "Reciprocal":
        return None
    return _rms(g, producers, node.inputs[0], x)


def _rms(g: Graph, producers: dict[str, Node], name: str, x: str) -> float | None:
    """eps when `name` is Sqrt(Add(ReduceMean(Pow(x, 2), [-1]), eps)), else None."""
    sqrt = producers.get(name)
    add = producers.get(sqrt.inputs[0]) if sqrt is not None and sqrt.op == "Sqrt" else None
    if add is None or add.op != "Add":
        return None
    for i in (0, 1):
        eps, mean = _const(g, add.inputs[1 - i]), producers.get(add.inputs[i])
        if eps is None or eps.size != 1 or mean is None or mean.op != "ReduceMean":
            continue
        axes = _const(g, mean.input(1)) if mean.input(1) else np.array(mean.attrs.get("axes", []))
        rank = g.values[x].rank
        if axes is None or [int(a) % rank for a in np.asarray(axes).reshape(-1)] != [rank - 1]:
            continue
        if not mean.attrs.get("keepdims", 1):
            continue
        square = producers.get(mean.inputs[0])
        if square is None or square.inputs[0] != x:
            continue
        two = _const(g, square.input(1))
        if (square.op == "Pow" and two is not None and two.size == 1 and float(two.reshape(-1)[0]) == 2.0) or (
                square.op == "Mul" and square.inputs[1] == x):
            return float(eps.reshape(-1)[0])
    return None


@register_pass("fuse_rms_norm")
def fuse_rms_norm(g: Graph) -> Graph:
    """Fuse decomposed RMSNorm (Pow, ReduceMean, Add eps, Sqrt, Reciprocal, Mul, Mul gamma)."""
    producers = g.producers()
    fused = []
    for out in g.nodes:
        if out.op != "Mul":
            continue
        for i in (0, 1):
            gamma, normed = out.inputs[i], producers.get(out.inputs[1 - i])
            gv = g.values[gamma]
            if gv.const is None or gv.rank != 1 or normed is None or normed.op not in ("Mul", "Div"):
                continue
            match = None
            for x in normed.inputs:
                if normed.op == "Mul" and (other := _other(normed, x)) is not None:
                    eps = _inverse_rms(g, producers, other, x)
                elif normed.op == "Div" and normed.inputs[0] == x:
                    eps = _rms(g, producers, normed.inputs[1], x)
                else:
                    eps = None
                shape = g.values[x].shape
                if eps is not None and shape and shape[-1] == gv.shape[0]:
                    match = (x, eps)
                    break
            if match:
                x, eps = match
                fused.append((out, Node(g.unique_name(f"{out.name}/rms_norm"), "RMSNormalization", [x, gamma],
                                        list(out.outputs), {"axis": -1, "epsilon": eps})))
                break
    for old, node in fused:
        g.nodes[g.nodes.index(old)] = node
    return g
