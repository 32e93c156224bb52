"""fuse_rotary: the rotary position embedding as exporters decompose it -> qcompile.Rotary.

Matched (HF's rotate_half convention; operands of Mul and Add in either order):

    Add(Mul(x, cos), Mul(Concat(Neg(Slice(x, h, end)), Slice(x, 0, h), axis=-1), sin))

with both Slices on the last axis of x and h half of its (static) size. qcompile.Rotary(x, cos,
sin) computes x * cos + rotate_half(x) * sin in one pass, cos and sin broadcast to x (six kernels
per q and per k become one).
"""

from __future__ import annotations

from ..ir.graph import Graph, Node
from .registry import register_pass


def _operands(node: Node | None, op: str) -> list[tuple[str, str]]:
    """(a, b) and (b, a) for a binary `op` node, else []."""
    if node is None or node.op != op or len(node.inputs) != 2:
        return []
    a, b = node.inputs
    return [(a, b), (b, a)]


def _last_axis_slice(g: Graph, node: Node | None, x: str) -> tuple[int, int] | None:
    """(start, end) of Slice(x, start, end, axes=[last]) with unit steps, else None."""
    if node is None or node.op != "Slice" or node.inputs[0] != x or len(node.inputs) < 4:
        return None
    consts = [g.values[n].const if n else None for n in node.inputs[1:5]]
    if any(c is None or c.size != 1 for c in consts[:3]) or (len(consts) > 3 and consts[3] is not None
                                                              and int(consts[3].reshape(-1)[0]) != 1):
        return None
    rank = g.values[x].rank
    if int(consts[2].reshape(-1)[0]) % rank != rank - 1:
        return None
    return int(consts[0].reshape(-1)[0]), int(consts[1].reshape(-1)[0])


def _rotate_half_of(g: Graph, producers: dict[str, Node], name: str) -> str | None:
    """x when `name` is Concat(Neg(x[..., h:]), x[..., :h], axis=-1), else None."""
    cat = producers.get(name)
    if cat is None or cat.op != "Concat" or len(cat.inputs) != 2:
        return None
    neg, first = producers.get(cat.inputs[0]), producers.get(cat.inputs[1])
    if neg is None or neg.op != "Neg" or first is None or first.op != "Slice":
        return None
    x = first.inputs[0]
    shape = g.values[x].shape
    if not shape or not isinstance(shape[-1], int) or shape[-1] % 2 or cat.attrs.get("axis") % len(shape) != len(shape) - 1:
        return None
    half = shape[-1] // 2
    second = _last_axis_slice(g, producers.get(neg.inputs[0]), x)
    if _last_axis_slice(g, first, x) != (0, half) or second is None or second[0] != half or second[1] < 2 * half:
        return None
    return x


@register_pass("fuse_rotary")
def fuse_rotary(g: Graph) -> Graph:
    """Fuse x*cos + rotate_half(x)*sin (Slice, Neg, Concat, Mul, Mul, Add) into qcompile.Rotary."""
    producers = g.producers()
    fused = []
    for add in g.nodes:
        for left, right in _operands(add, "Add"):
            found = None
            for x, cos in _operands(producers.get(left), "Mul"):
                for rot, sin in _operands(producers.get(right), "Mul"):
                    if _rotate_half_of(g, producers, rot) == x and g.values[x].rank:
                        found = (x, cos, sin)
            if found:
                fused.append((add, Node(g.unique_name(f"{add.name}/rotary"), "Rotary", list(found), list(add.outputs),
                                        {}, "qcompile")))
                break
    for old, node in fused:
        g.nodes[g.nodes.index(old)] = node
    return g
