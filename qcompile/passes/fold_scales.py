"""fold_scales: constant per-channel scales next to a linear layer move into its weight.

  MatMul(x * c, W)  ==  MatMul(x, diag(c) W)      c per input channel (K), or a scalar
  MatMul(x / c, W)  ==  MatMul(x, diag(1/c) W)
  MatMul(x, W) * c  ==  MatMul(x, W diag(c))      c per output channel (N), or a scalar

Why: exporters and quantization tools leave such scales as separate elementwise ops (SmoothQuant's
activation smoothing, a sqrt(d) pre-scale, a dequantized model's output scale). Folded, they cost
nothing at run time, and the weight the quantizer sees is the one the layer really applies, so its
per-channel or per-group scales absorb them. Applied only when every reader of the scaled value is
such a linear layer (nothing else may see the unscaled value) and, for an output scale, when the
product has no other reader. Exact up to one float rounding per weight.
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node
from .linear_weights import const_weight, k_axis, readers_of, set_const_input
from .registry import register_pass


def _channel_scale(g: Graph, node: Node, channels: int) -> tuple[str, np.ndarray] | None:
    """(the scaled operand, the scale as a [channels] vector) of Mul/Div by a constant that varies at
    most along the last axis; None otherwise."""
    if node.domain or node.op not in ("Mul", "Div") or len(node.inputs) != 2:
        return None
    order = (0, 1) if node.op == "Div" else (0, 1, 1, 0)
    for a, b in zip(order[::2], order[1::2]):
        c, x = g.values[node.inputs[b]].const, node.inputs[a]
        if c is None or g.values[x].const is not None or not np.issubdtype(c.dtype, np.floating):
            continue
        if c.size == 1 or (c.shape[-1] == channels and c.size == channels):
            if c.ndim > g.values[x].rank:
                return None                      # the scale would broadcast x to a higher rank
            vec = np.broadcast_to(c.reshape(-1), (channels,)).astype(np.float64)
            return x, (1.0 / vec if node.op == "Div" else vec)
    return None


@register_pass("fold_scales")
def fold_scales(g: Graph) -> Graph:
    """Fold constant per-channel Mul/Div scales into the adjacent MatMul/Gemm weights (exact)."""
    changed = True
    while changed:
        changed = False
        consumers, producers, readers = g.consumers(), g.producers(), readers_of(g)
        for node in list(g.nodes):
            if k_axis(node) is None or const_weight(g, node) is None or g.values[node.inputs[0]].const is not None:
                continue
            w, axis = const_weight(g, node), k_axis(node)
            if w.ndim != 2:
                continue
            # an input scale: every reader of the scaled value must be a linear layer with a weight
            scaler = producers.get(node.inputs[0])
            found = scaler and scaler.outputs[0] not in g.outputs and _channel_scale(g, scaler, w.shape[axis])
            if found and all(k_axis(r) is not None and r.inputs[0] == scaler.outputs[0] and
                             const_weight(g, r) is not None and const_weight(g, r).ndim == 2
                             for r in consumers[scaler.outputs[0]]):
                x, scale = found
                for r in consumers[scaler.outputs[0]]:
                    rw, ra = const_weight(g, r), k_axis(r)
                    s = scale[:, None] if ra == 0 else scale[None, :]
                    set_const_input(g, r, 1, (rw * s).astype(rw.dtype), readers, "scaled")
                    r.inputs[0] = x
                g.nodes.remove(scaler)                  # its only readers now read x
                changed = True
                break
            # an output scale on a MatMul without bias, read by nothing else
            users = consumers.get(node.outputs[0], [])
            if node.op == "MatMul" and len(users) == 1 and node.outputs[0] not in g.outputs:
                found = _channel_scale(g, users[0], w.shape[1])
                if found and found[0] == node.outputs[0]:
                    set_const_input(g, node, 1, (w * found[1][None, :]).astype(w.dtype), readers, "scaled")
                    node.outputs[0] = users[0].outputs[0]      # the MatMul now produces the scaled value
                    g.nodes.remove(users[0])
                    changed = True
                    break
    g.prune_values()
    return g
