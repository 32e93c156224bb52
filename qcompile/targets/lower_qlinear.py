"""Lower `qcompile.QLinear` to what the CPU kernels run: quantize the activations once, then a
packed dot-product GEMV/GEMM.

    y = QLinear(x, q, scales[, zero_points])      (int8 activations, per token or static)
 -> xq, xscale, xsum = qcompile.QuantizeRows(x)                   [group, amax (static only)]
    y = qcompile.QLinearPacked(xq, xscale, xsum, w, s, zp, colsum) [family, bits, group, K, N, tiles]

activations="int8-file" (a QDQ file's own int8/uint8 activations, passes/file_activations.py):
 -> xq, xscale, xsum = qcompile.FileRows(x)                       [group, scale]
    y = QLinearPacked(...) + (-scale * zp * column sums of the dequantized weight)

activations="int8" quantizes each row with its own absmax (qc_quantize_rows); "int8-static"
with the calibrated clipping range attr act_amax, recorded as QuantizeRows attr amax
(qc_quantize_rows_static). QLinear nodes reading the same activations with the same group size
and the same static range (or both dynamic) share one QuantizeRows (q/k/v projections, gate/up).
The packed layout (qlinear_layout) is the dot-product layout every CPU kernel uses: 16 output
columns x 4 consecutive k per 64-byte field, the shape of both AVX-512 `vpdpbusd` and NEON
`sdot`. The model file stays target-neutral; the layout is chosen here and recorded in the
manifest.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..ir import dtypes
from ..ir.graph import Graph, Node
from ..ir.quant import QuantSpec
from ..quant.activations import static_amax
from .plan import LoweringError
from .qlinear_layout import FAMILY_CODES, pack_qlinear

LAYOUT = "dot4-16x4"


def _family(node: Node) -> str:
    family = node.attrs.get("family")
    if family not in FAMILY_CODES:
        raise LoweringError(f"no CPU kernel for weight format family '{family}'", node=node.name, op=node.op_id)
    return family


def check_activations(g: Graph, node: Node, kernels: str = "CPU") -> float | None:
    """Checks what the kernels need; returns the static clipping range (float32 value), or None
    for per-token (dynamic) scales and a file's activations (int8-file)."""
    acts = node.attrs.get("activations", "int8")
    if acts == "int8-file" and (kernels != "CPU" or node.attrs.get("family") == "ternary"):
        raise LoweringError(f"a QDQ file's static int8 activations have no {kernels} kernel for "
                            f"{node.attrs.get('family')} weights yet", node=node.name, op=node.op_id,
                            hint="build with --activations dynamic (per-token scales: close to, not the same as, "
                                 "onnxruntime on this file)")
    if acts == "int8-file":
        return None
    if acts not in ("int8", "int8-static"):
        raise LoweringError(f"QLinear with {acts} activations has no {kernels} kernel yet (only int8, per token or "
                            "static)", node=node.name, op=node.op_id, hint="build with the default activations")
    x = g.values[node.inputs[0]]
    if x.shape is None or len(x.shape) < 2 or not isinstance(x.shape[-1], int):
        raise LoweringError(f"the activations must be [rows..., K] with K known at build time, got "
                            f"{list(x.shape or [])}", node=node.name, op=node.op_id)
    if acts == "int8":
        return None
    try:
        return float(static_amax(node.attrs.get("act_amax")))
    except ValueError as exc:
        raise LoweringError(f"int8-static activations need a valid act_amax: {exc}", node=node.name,
                            op=node.op_id, hint="quantize with act_ranges from calibration") from None


def _file_zero_point(node: Node) -> int:
    """The zero point in the kernels' int8 terms (qc_file_rows stores a uint8 u as u - 128)."""
    return int(node.attrs["act_file_zero_point"]) - (128 if node.attrs["act_file_dtype"] == "uint8" else 0)


def _dequantized_column_sums(node: Node, q, scales, zero_points) -> np.ndarray:
    """sum over k of the layer's dequantized weight, per output column (float64)."""
    return np.asarray(QuantSpec.of_qlinear(node.attrs, scales, zero_points).dequantize(q), np.float64).sum(axis=0)


def _pad_columns(q, scales, zp):
    """Zero columns up to a multiple of 16 (scale 1, zero point 0): they compute zeros."""
    n = q.shape[1]
    n_pad = -(-n // 16) * 16
    if n_pad == n:
        return q, scales, zp, n
    extra = n_pad - n
    q = np.pad(q, ((0, 0), (0, extra)))
    if np.ndim(scales):
        scales = np.pad(scales, [(0, 0)] * (np.ndim(scales) - 1) + [(0, extra)], constant_values=1)
    if zp is not None:
        zp = np.pad(zp, [(0, 0)] * (np.ndim(zp) - 1) + [(0, extra)])
    return q, scales, zp, n_pad


def lower_qlinear(g: Graph, tiles: Callable | None = None) -> list[dict]:
    """Rewrite every QLinear in g in place; returns one manifest record per layer.

    `tiles(family, group, K, N, lead_shape)` may choose each layer's panel width (a tuned
    schedule); None keeps the rule-based one."""
    records = []
    shared: dict[tuple, tuple[str, str, str]] = {}   # (x, group, how it is quantized) -> rows
    new_nodes: list[Node] = []
    for node in g.nodes:
        if node.op_id != "qcompile.QLinear":
            new_nodes.append(node)
            continue
        amax = check_activations(g, node)
        x = g.values[node.inputs[0]]
        q = g.values[node.inputs[1]].const
        k, n = q.shape
        family = _family(node)
        group = int(node.attrs.get("group_size") or 0) or k
        scales = g.values[node.inputs[2]].const
        zp = g.values[node.inputs[3]].const if node.input(3) else None
        q, scales, zp, n_pad = _pad_columns(q, scales, zp)
        try:
            t = tiles(family, group, k, n_pad, tuple(x.shape[:-1])) if tiles else None
            packed = pack_qlinear(q, family, scales, zp, group if family in ("int4", "uint4") else None, t)
        except ValueError as exc:
            raise LoweringError(f"cannot pack this weight for the CPU kernels: {exc}", node=node.name,
                                op=node.op_id, hint="keep this layer bf16 or fp32 with a plan file") from None
        from_file = node.attrs.get("activations") == "int8-file"
        key = (x.name, group, ("file", node.attrs["act_file_scale"]) if from_file else amax)
        if key not in shared:
            lead = tuple(x.shape[:-1])
            outs = (g.add_value(g.unique_name(f"{x.name}.q8"), dtypes.INT8, x.shape).name,
                    g.add_value(g.unique_name(f"{x.name}.q8scale"), dtypes.FP32, lead + (1,)).name,
                    g.add_value(g.unique_name(f"{x.name}.q8sum"), dtypes.INT32, lead + (k // group,)).name)
            if from_file:
                op, attrs = "FileRows", {"group": group, "scale": float(np.float32(node.attrs["act_file_scale"]))}
            else:
                op, attrs = "QuantizeRows", {"group": group} if amax is None else {"group": group, "amax": amax}
            new_nodes.append(Node(g.unique_name(f"{node.name}/{'file_rows' if from_file else 'quantize_rows'}"),
                                  op, [x.name], list(outs), attrs, "qcompile"))
            shared[key] = outs
        base = node.inputs[1]

        def const(suffix, arr):
            return g.add_const(f"{base}.{LAYOUT}.{suffix}", arr).name if arr is not None else ""

        inputs = [*shared[key], const("weights", packed.weights), const("scales", packed.scales),
                  const("zero_points", packed.zero_points), const("colsum", packed.colsum)]
        out = node.outputs[0]
        shift = _file_zero_point(node) if from_file else 0
        y = final = g.add_value(g.unique_name(f"{out}.centered"), g.values[out].dtype, g.values[out].shape).name \
            if shift else out
        if n_pad != n:     # the kernels write whole 16-column tiles: compute padded, keep the first n
            y_value = g.values[y]
            y = g.add_value(g.unique_name(f"{y}.padded"), y_value.dtype, tuple(y_value.shape[:-1]) + (n_pad,)).name
        new_nodes.append(Node(node.name, "QLinearPacked", inputs, [y],
                              {"family": family, "bits": packed.bits, "group": group, "K": k, "N": n_pad,
                               "tiles": packed.tiles, "layout": LAYOUT}, "qcompile"))
        if n_pad != n:
            ints = [g.add_const(f"{y}.{what}", np.array([v], np.int64)).name for what, v in
                    (("start", 0), ("end", n), ("axis", -1))]
            new_nodes.append(Node(g.unique_name(f"{node.name}/unpad"), "Slice", [y, *ints], [final]))
        if shift:          # sum (xq - zp) * w = sum xq * w - zp * sum w: the second term is a constant
            w = g.values[node.inputs[1]].const
            column = _dequantized_column_sums(node, w, g.values[node.inputs[2]].const,
                                              g.values[node.inputs[3]].const if node.input(3) else None)
            corr = g.add_const(f"{node.name}.act_zero_point", (-float(np.float32(node.attrs["act_file_scale"])) *
                                                                shift * column).astype(np.float32)).name
            new_nodes.append(Node(g.unique_name(f"{node.name}/act_zero_point"), "Add", [final, corr], [out]))
        records.append({"node": node.name, "format": node.attrs.get("format", family), "layout": LAYOUT,
                        "tiles": packed.tiles, "group": group,
                        "activations": ("int8 from the file (scale "
                                        f"{np.float32(node.attrs['act_file_scale'])!s}, zero point "
                                        f"{node.attrs['act_file_zero_point']})") if from_file else
                                       "int8 per token" if amax is None else f"int8 static (amax {np.float32(amax)!s})",
                        "packed_bytes": int(sum(a.nbytes for a in (packed.weights, packed.scales, packed.zero_points,
                                                                   packed.colsum) if a is not None))})
    g.nodes = new_nodes
    g.prune_values()
    return records

