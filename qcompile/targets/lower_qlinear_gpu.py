"""Lower `qcompile.QLinear` for GPU targets: kernels written in TIR (no C micro-kernels), the
weights transposed to W[N, K] so a warp reads one output's K contiguously and dequantizes in
registers, packed as small as their values allow: int8 one per byte, int4 two, ternary four
(`bits` 8, 4, 2; each field holds the value plus `offset`, lowest bits first along K).

    y = QLinear(x, q, scales[, zero_points])          (int8 activations, per token or static)
 -> xq, xscale = qcompile.QuantizeRowsTIR(x)                        [amax (static only)]
    y = qcompile.QLinearTIR(xq, xscale, W[N, K*bits/8], S[N, G][, Z[N, G]])  [group G, bits, offset]

QuantizeRowsTIR follows qcompile.quant.activations' float32 contract, so its int8 rows and
scales are bit-identical to numpy's and the CPU kernels'. QLinearTIR computes
y = xscale * sum_k xq * ((W - Z) * S) in float32: the reference sums the same exact products in
float64, so the two agree to float32 rounding (about 1e-6 relative). Every format the reference
dequantizes (int8, int4, ternary; per tensor, per channel, per group along K) lowers the same way.
"""

from __future__ import annotations

import numpy as np

from ..ir import dtypes
from ..ir.graph import Graph, Node
from ..ir.quant import QuantSpec
from .lower_qlinear import check_activations
from .plan import LoweringError


def _groups(node: Node, q: np.ndarray, scales, zero_points) -> tuple[int, np.ndarray, np.ndarray | None]:
    """(group size along K, S[N, K/G], Z[N, K/G] or None) such that the weight is (q - Z) * S."""
    k, n = q.shape
    spec = QuantSpec.of_qlinear(node.attrs, scales, zero_points)
    axis = None if spec.granularity == "per_tensor" else spec.axis % 2
    if spec.granularity == "per_group" and axis != 0:
        raise LoweringError("groups along N have no GPU kernel (only along K)", node=node.name, op=node.op_id)
    group = int(spec.group_size) if spec.granularity == "per_group" else k
    if k % group:
        raise LoweringError(f"K={k} is not a multiple of the group size {group}", node=node.name, op=node.op_id)
    full_s = spec.expand(scales, (k, n)).astype(np.float32)
    s = np.ascontiguousarray(full_s[::group].T)
    z = None
    if zero_points is not None and np.any(zero_points):
        z = np.ascontiguousarray(spec.expand(zero_points, (k, n)).astype(np.float32)[::group].T)
    if not np.array_equal(np.repeat(s, group, axis=1), full_s.T):
        raise LoweringError("the scales vary inside a group along K", node=node.name, op=node.op_id)
    return group, s, z


def _pack(node: Node, q: np.ndarray) -> tuple[np.ndarray, int, int]:
    """q[K, N] logical integers -> (W[N, K * bits / 8] bytes, bits, offset)."""
    lo, hi = int(q.min(initial=0)), int(q.max(initial=0))
    k = q.shape[0]
    for bits in (2, 4):
        offset = 0 if lo >= 0 else 1 << (bits - 1)
        if hi + offset < (1 << bits) and lo + offset >= 0 and k % (8 // bits) == 0 and \
                int(node.attrs.get("bits", 8)) <= bits:
            per = 8 // bits
            u = (q.T.astype(np.int16) + offset).astype(np.uint8).reshape(q.shape[1], k // per, per)
            packed = np.zeros(u.shape[:2], np.uint8)
            for t in range(per):
                packed |= u[..., t] << np.uint8(t * bits)
            return packed, bits, offset
    return np.ascontiguousarray(q.T).astype(np.int8), 8, 0


def lower_qlinear_gpu(g: Graph) -> list[dict]:
    """Rewrite every QLinear in g in place; returns one manifest record per layer."""
    records, shared, new_nodes = [], {}, []
    for node in g.nodes:
        if node.op_id != "qcompile.QLinear":
            new_nodes.append(node)
            continue
        amax = check_activations(g, node, "GPU")
        x = g.values[node.inputs[0]]
        q = g.values[node.inputs[1]].const
        scales = g.values[node.inputs[2]].const if node.input(2) else None
        if scales is None:
            raise LoweringError("a QLinear without scales has no GPU kernel", node=node.name, op=node.op_id)
        zp = g.values[node.inputs[3]].const if node.input(3) else None
        k, n = q.shape
        group, s, z = _groups(node, q, scales, zp)
        key = (x.name, amax)
        if key not in shared:
            lead = tuple(x.shape[:-1])
            outs = (g.add_value(g.unique_name(f"{x.name}.q8"), dtypes.INT8, x.shape).name,
                    g.add_value(g.unique_name(f"{x.name}.q8scale"), dtypes.FP32, lead + (1,)).name)
            new_nodes.append(Node(g.unique_name(f"{node.name}/quantize_rows"), "QuantizeRowsTIR", [x.name], list(outs),
                                  {} if amax is None else {"amax": amax}, "qcompile"))
            shared[key] = outs
        base = node.inputs[1]
        packed, bits, offset = _pack(node, q)
        w = g.add_const(f"{base}.nk.b{bits}", packed).name
        inputs = [*shared[key], w, g.add_const(f"{base}.nk.scales", s).name]
        if z is not None:
            inputs.append(g.add_const(f"{base}.nk.zero_points", z).name)
        new_nodes.append(Node(node.name, "QLinearTIR", inputs, list(node.outputs),
                              {"group": group, "K": k, "N": n, "bits": bits, "offset": offset,
                               "family": node.attrs.get("family", "int8")}, "qcompile"))
        records.append({"node": node.name, "format": node.attrs.get("format", node.attrs.get("family")),
                        "layout": f"W[N,K] {bits}-bit (GPU)", "group": group,
                        "activations": "int8 per token" if amax is None else f"int8 static (amax {np.float32(amax)!s})",
                        "packed_bytes": int(packed.nbytes + s.nbytes + (z.nbytes if z is not None else 0))})
    g.nodes = new_nodes
    g.prune_values()
    return records
