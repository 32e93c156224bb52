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
from .linear_weights import const_weight, k_axis, readers_of, set_const_input
from .registry import register_pass


@register_pass("fold_norms")
def fold_norms(g: Graph) -> Graph:
    """Fold RMSNormalization gammas into the following MatMul/Gemm weights (exact in fp32)."""
    consumers, readers = g.consumers(), readers_of(g)
    for norm in list(g.nodes):
        if norm.op != "RMSNormalization" or norm.domain or len(norm.outputs) != 1:
            continue
        gamma = g.values[norm.inputs[1]].const
        linears = consumers.get(norm.outputs[0], [])
        if gamma is None or gamma.ndim != 1 or not linears or norm.outputs[0] in g.outputs:
            continue
        if norm.attrs.get("axis", -1) not in (-1, g.values[norm.inputs[0]].rank - 1):
            continue
        plan = []
        for node in linears:
            axis, w = k_axis(node), const_weight(g, node)
            if w is None or w.ndim != 2 or node.inputs[0] != norm.outputs[0] or w.shape[axis] != gamma.shape[0]:
                break
            plan.append((node, axis, w))
        else:
            for node, axis, w in plan:
                scaled = (w * (gamma[:, None] if axis == 0 else gamma[None, :])).astype(w.dtype)
                set_const_input(g, node, 1, scaled, readers, "folded")
            norm.inputs[1] = g.add_const(f"{norm.inputs[1]}_ones", np.ones_like(gamma)).name
    g.prune_values()
    return g
