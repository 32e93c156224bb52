"""fuse_attention: scaled dot-product attention, as exporters decompose it, -> qcompile.Attention.

Matched (from each Softmax over the last axis of a rank-4 tensor):

    out = MatMul(Softmax(Add(Mul(MatMul(q', k'), c), mask)), v')

where the scale c may instead sit on q and k (torch's SDPA exports sqrt(scale) on each) or be a
Div, the mask Add is optional, k' is k with its last two axes swapped, and k'/v' may be the
grouped-query `repeat_kv` expansion (Unsqueeze -> Expand -> Reshape) of [b, kv_heads, t, d]
tensors. The fused node reads the unexpanded k and v, so neither the transposed nor the repeated
copies are materialized. The fused node replaces the final MatMul and keeps its output value; the
rest is left for eliminate_dead, so values with other readers stay correct.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node
from .registry import register_pass


def _scalar(g: Graph, name: str) -> float | None:
    c = g.values[name].const
    return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None


class _Chain:
    """Peels scale multiplies, last-two-axes transposes and repeat_kv off one operand."""

    def __init__(self, g: Graph, producers: dict[str, Node], name: str):
        self.scale, self.transposed, self.repeated = 1.0, False, False
        while True:
            node = producers.get(name)
            if node is None:
                break
            if node.op in ("Mul", "Div") and len(node.inputs) == 2:
                c = _scalar(g, node.inputs[1])
                if c is None and node.op == "Mul":
                    c, other = _scalar(g, node.inputs[0]), node.inputs[1]
                else:
                    other = node.inputs[0]
                if c is None or c == 0:
                    break
                self.scale *= c if node.op == "Mul" else 1.0 / c
                name = other
            elif node.op == "Transpose" and list(node.attrs.get("perm", ())) == [0, 1, 3, 2]:
                self.transposed = not self.transposed
                name = node.inputs[0]
            elif (base := _repeat_kv_input(g, producers, node)) is not None and not self.repeated:
                self.repeated = True
                name = base
            else:
                break
        self.value = name


def _repeat_kv_input(g: Graph, producers: dict[str, Node], node: Node) -> str | None:
    """x for Reshape(Expand(Unsqueeze(x, 2), [.., .., n, .., ..]), [b, kv*n, t, d]), else None."""
    if node.op != "Reshape":
        return None
    expand = producers.get(node.inputs[0])
    if expand is None or expand.op != "Expand":
        return None
    unsq = producers.get(expand.inputs[0])
    if unsq is None or unsq.op != "Unsqueeze":
        return None
    axes = g.values[unsq.inputs[1]].const if len(unsq.inputs) > 1 else np.array(unsq.attrs.get("axes", []))
    x = unsq.inputs[0]
    if axes is None or list(np.asarray(axes).reshape(-1)) != [2] or g.values[x].rank != 4:
        return None
    return x


@register_pass("fuse_attention")
def fuse_attention(g: Graph) -> Graph:
    """Fuse decomposed scaled dot-product attention (GQA, mask, scale) into qcompile.Attention."""
    producers, consumers = g.producers(), g.consumers()
    fused = []
    for sm in list(g.nodes):
        if sm.op != "Softmax" or g.values[sm.inputs[0]].rank != 4 or sm.attrs.get("axis", -1) not in (-1, 3):
            continue
        readers = consumers.get(sm.outputs[0], [])
        if len(readers) != 1 or readers[0].op != "MatMul" or readers[0].inputs[0] != sm.outputs[0]:
            continue
        pv = readers[0]
        add = producers.get(sm.inputs[0])
        # the logits are the scores, or scores + mask with the operands in either order
        options = [(sm.inputs[0], None)]
        if add is not None and add.op == "Add":
            options = [(add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])] + options
        found = None
        for x, mask in options:
            scores = _Chain(g, producers, x)
            qk = producers.get(scores.value)
            if qk is not None and qk.op == "MatMul" and not scores.transposed and not scores.repeated:
                found = scores, qk, mask
                break
        if found is None:
            continue
        scores, qk, mask = found
        q, k, v = _Chain(g, producers, qk.inputs[0]), _Chain(g, producers, qk.inputs[1]), _Chain(g, producers,
                                                                                              pv.inputs[1])
        if q.transposed or q.repeated or not k.transposed or v.transposed or v.scale != 1.0:
            continue
        shapes = [g.values[t.value].shape for t in (q, k, v)]
        if any(s is None or len(s) != 4 for s in shapes):
            continue
        hq, hk, hv = shapes[0][1], shapes[1][1], shapes[2][1]
        if not all(isinstance(h, int) for h in (hq, hk, hv)) or hk != hv or hq % hk:
            continue
        inputs = [q.value, k.value, v.value] + ([mask] if mask is not None else [])
        fused.append((pv, Node(g.unique_name(f"{sm.name}/fused_attention"), "Attention", inputs, list(pv.outputs),
                               {"scale": q.scale * k.scale * scores.scale}, "qcompile")))
    for pv, node in fused:          # the fused node takes over the output value; the rest goes dead
        g.nodes[g.nodes.index(pv)] = node
    return g
