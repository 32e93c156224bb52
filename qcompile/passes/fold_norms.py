"""fold_norms: a norm's gamma moves into the linear layers that read the normalized value.

RMSNormalization(x, gamma) @ W == RMSNormalization(x, 1) @ (diag(gamma) W): each row k of W is
scaled by gamma[k], and the norm is left scale-free. Applied when every reader of the norm's
output is a MatMul (or Gemm with transB) with a constant weight, so nothing else sees the
unscaled value. A weight read elsewhere too is copied rather than changed. Exact up to float
rounding; it makes outlier channels of gamma part of the weights, where per-channel or
Hadamard-rotated quantization can deal with them (issue 7's accuracy passes build on it).
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph
from .registry import register_pass


def _k_axis(node) -> int | None:
    """Which axis of the node's weight is K (the reduction axis), or None if not foldable."""
    if node.op == "MatMul" and not node.domain:
        return 0
    if node.op == "Gemm" and not node.domain and not node.attrs.get("transA"):
        return 1 if node.attrs.get("transB") else 0
    return None


@register_pass("fold_norms")
def fold_norms(g: Graph) -> Graph:
    """Fold RMSNormalization gammas into the following MatMul/Gemm weights (exact in fp32)."""
    consumers = g.consumers()
    readers_of = {name: len(nodes) for name, nodes in consumers.items()}
    for norm in list(g.nodes):
        if norm.op != "RMSNormalization" or norm.domain or len(norm.outputs) != 1:
            continue
        gamma = g.values[norm.inputs[1]].const
        readers = consumers.get(norm.outputs[0], [])
        if gamma is None or gamma.ndim != 1 or not readers or norm.outputs[0] in g.outputs:
            continue
        if norm.attrs.get("axis", -1) not in (-1, g.values[norm.inputs[0]].rank - 1):
            continue
        plan = []
        for node in readers:
            axis = _k_axis(node)
            w = g.values[node.inputs[1]].const if axis is not None and len(node.inputs) > 1 else None
            if w is None or w.ndim != 2 or node.inputs[0] != norm.outputs[0] or w.shape[axis] != gamma.shape[0]:
                break
            plan.append((node, axis, w))
        else:
            for node, axis, w in plan:
                scaled = (w * (gamma[:, None] if axis == 0 else gamma[None, :])).astype(w.dtype)
                if readers_of.get(node.inputs[1], 0) > 1:          # shared: give this reader its own copy
                    node.inputs[1] = g.add_const(f"{node.inputs[1]}_folded", scaled).name
                else:
                    g.values[node.inputs[1]].const = scaled
            norm.inputs[1] = g.add_const(f"{norm.inputs[1]}_ones", np.ones_like(gamma)).name
    g.prune_values()
    return g
