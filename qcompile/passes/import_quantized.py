"""import_quantized: models quantized by other tools -> qcompile.QLinear integer kernels.

Two weight encodings are recognized and rewritten into qcompile.QLinear(x, q, scales[, zero_points])
(the op quantize_weights emits; targets pack q for the integer kernels):

* `com.microsoft.MatMulNBits` (onnxruntime's MatMulNBitsQuantizer), bits = 4, block_size 32, 64 or
  128 dividing K, constant B/scales/zero points, no g_idx. Its weight is w = (c - zp) * s per block
  of k, c the uint4 code, zp = 8 when absent. Without zero points (or all 8) the layer becomes
  int4-gG with q = c - 8 in [-8, 7]; with other zero points it is int4-gG-asym, q = c. The dequantized
  QLinear weight equals MatMulNBits' weight bit for bit. A bias input becomes a following Add.
  Anything else (other bits or block sizes, g_idx, weights computed at run time) is an
  ImportQuantizedError naming the node: there is no kernel for it.

* QDQ weights: DequantizeLinear(constant integer W, constant scale[, zero point]) as the weight of
  a MatMul (right operand [K, N]) or a Gemm (B, transB either way); real = (W - zp) * scale.
  q = W - zp is exact as "int8" when it lies in [-127, 127] and the scale is per tensor (expanded
  to [N]) or per output channel -- so symmetric int8, but also uint8 or int8 with zero points
  whose shifted values fit; blocked along K by 32/64/128 (opset 21 int4/uint4) it is exact as
  int4-gG / int4-gG-asym when the codes fit a nibble. Any other weight (an asymmetric uint8 range
  that needs q = 128, per-k scales, ...) has no exact integer kernel: it is dequantized and
  re-quantized with the int8 format, and the report says so with the weight error. A Gemm becomes
  QLinear, then Mul(alpha) when alpha != 1, then Add(beta * C); one 2-D Transpose between the DQ
  and the layer swaps K and N. A DQ weight the pass cannot put on a QLinear at all (transA, a
  batched weight, float16, other ops between DQ and layer) is left alone -- fold_constants turns
  it into the float weight it denotes, so the numbers stay the model's -- and reported as kept
  float.

Activation QuantizeLinear -> DequantizeLinear pairs (static scales from quantize_static) are kept:
they are part of what the model computes -- rounding to the calibrated grid and saturating at its
ends (quantize_static even drops a Relu into the zero point -128 of the next QuantizeLinear) -- so
dropping them would change the numbers. Where such a DequantizeLinear (one scale and zero point,
int8 or uint8) feeds a rewritten layer, the QLinear records it (attrs act_file_input, the integer
tensor, and act_file_scale / act_file_zero_point / act_file_dtype): use_file_activations (run by
prepare unless per-token activations are asked for) then feeds the layer those integers, so the
kernel computes sum (xq - zp) * q exactly as onnxruntime does, instead of quantizing the
dequantized values again per token (which moved SmolLM2's logits by 27%). The targets run Q/DQ as
elementwise kernels (float <-> int8/uint8, per tensor or per axis).

Report: every layer rewritten (or kept float) is one entry {node, op, format, exact, note} in
`g.metadata[REPORT_KEY]` (JSON; read it with `import_report(g)`); `exact` says whether the layer
computes with the model's own weight. Re-quantized and kept-float layers are also logged as
warnings (logger "qcompile.import_quantized").

Runs in the default pipeline's simplify phase, before fold_constants, which would otherwise fold
every weight DequantizeLinear into a float constant and lose the integers.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from ..errors import QCompileError
from ..ir import dtypes
from ..ir.graph import Graph, Node
from ..ir.interpret.quant import expand_scale, unpack_bits
from ..quant.formats import quantize
from .registry import register_pass

REPORT_KEY = "qcompile.import_quantized"
GROUPS = (32, 64, 128)
log = logging.getLogger("qcompile.import_quantized")


class ImportQuantizedError(QCompileError):
    phase = "import_quantized"


def import_report(g: Graph) -> list[dict]:
    """The entries the pass recorded on g: one per imported (or kept-float) layer."""
    return json.loads(g.metadata.get(REPORT_KEY, "[]"))


@register_pass("import_quantized")
def import_quantized(g: Graph) -> Graph:
    """Rewrite MatMulNBits and DequantizeLinear-weight MatMul/Gemm layers into qcompile.QLinear."""
    report: list[dict] = []
    producers = g.producers()
    consumed: list[Node] = []
    cache: dict[tuple, tuple] = {}
    for node in list(g.nodes):
        if node.op_id == "com.microsoft.MatMulNBits":
            report.append(_matmul_nbits(g, node))
        elif node.op in ("MatMul", "Gemm") and not node.domain and node.input(1):
            dq, path = _weight_source(g, producers, node.inputs[1])
            if dq is None:
                continue
            why_not = None
            if not _plain(g, dq, path):
                via = " -> ".join(["DequantizeLinear"] + [p.op for p in reversed(path)])
                why_not = f"the weight is {via} (only a DequantizeLinear or one 2-D Transpose of it is imported)"
            elif g.values[node.inputs[0]].const is not None or _weight_source(g, producers, node.inputs[0])[0]:
                why_not = "constant activations (the layer is folded at build time)"
            if why_not:     # the numbers stay the model's: fold_constants dequantizes the weight
                report.append(_entry(node, node.op, "fp32", True, f"kept float: {why_not}"))
                continue
            entry = _qdq_linear(g, node, dq, cache, transposed=bool(path))
            if entry["format"] != "fp32" and _record_file_activations(g, producers, node):
                entry["note"] += "; activations: the file's static int8 scale and zero point"
            report.append(entry)
            if entry["format"] != "fp32":
                consumed.extend([dq, *path])
    users, doomed = g.consumers(), {}
    for dead in reversed(consumed):     # what only rewritten layers read; a Transpose before its DQ
        if dead.outputs[0] not in g.outputs and all(id(u) in doomed for u in users.get(dead.outputs[0], [])):
            doomed[id(dead)] = dead
    g.remove_nodes(doomed.values())
    for entry in report:
        if not entry["exact"] or entry["format"] == "fp32":
            log.warning("import_quantized: %s (%s): %s", entry["node"], entry["op"], entry["note"])
    g.metadata[REPORT_KEY] = json.dumps(import_report(g) + report)
    g.prune_values()
    return g


def _const_inputs(g: Graph, node: Node) -> bool:
    return all(g.values[x].const is not None for x in node.inputs if x)


VIEWS = ("Transpose", "Reshape", "Identity", "Squeeze", "Unsqueeze", "Cast", "Flatten")


def _weight_source(g: Graph, producers: dict[str, Node], name: str) -> tuple[Node | None, list[Node]]:
    """(DequantizeLinear of constants that a weight comes from, the single-input ops in between,
    nearest the layer first), or (None, []) when the weight is no such thing."""
    path: list[Node] = []
    node = producers.get(name)
    while node is not None and not node.domain and node.op in VIEWS and len(path) < 4:
        path.append(node)
        data = [x for x in node.inputs[1:] if x]
        if any(g.values[x].const is None for x in data):       # a shape computed at run time
            return None, []
        node = producers.get(node.inputs[0])
    if node is None or node.domain or node.op != "DequantizeLinear" or not _const_inputs(g, node):
        return None, []
    return node, path


def _plain(g: Graph, dq: Node, path: list[Node]) -> bool:
    """Whether the weight is the DQ itself or one 2-D transpose of it (which swaps K and N)."""
    if not path:
        return True
    perm = path[0].attrs.get("perm")
    return (len(path) == 1 and path[0].op == "Transpose" and g.values[dq.outputs[0]].rank == 2
            and (perm is None or list(perm) == [1, 0]))


def _entry(node: Node, op: str, fmt: str, exact: bool, note: str) -> dict:
    return {"node": node.name, "op": op, "format": fmt, "exact": exact, "note": note}


# ---------------------------------------------------------------------------------- QLinear


def _make_qlinear(g: Graph, node: Node, x: str, consts: list[str], fmt: str, spec: dict, out: str) -> None:
    """Turn `node` into QLinear(x, *consts) -> out, in place (keeps its name and position)."""
    node.op, node.domain, node.inputs, node.outputs = "QLinear", "qcompile", [x, *consts], [out]
    node.attrs = {"format": fmt, **spec, "activations": "int8"}


def _int4_spec(group: int) -> dict:
    return {"bits": 4, "granularity": "per_group", "axis": 0, "group_size": group}


def _after(g: Graph, node: Node, op: str, inputs: list[str], out: str, hint: str) -> Node:
    """A node inserted right after `node` (so the graph stays topologically ordered)."""
    new = Node(g.unique_name(f"{node.name}/{hint}"), op, inputs, [out])
    g.nodes.insert(g.nodes.index(node) + 1, new)
    return new


def _temp(g: Graph, like: str, hint: str) -> str:
    v = g.values[like]
    return g.add_value(g.unique_name(f"{like}.{hint}"), v.dtype, v.shape).name


def _record_file_activations(g: Graph, producers: dict[str, Node], node: Node) -> bool:
    """Record on a QLinear that its input is DequantizeLinear(integers, one scale, one zero point)."""
    dq = producers.get(node.inputs[0])
    if dq is None or dq.domain or dq.op != "DequantizeLinear" or dq.attrs.get("block_size"):
        return False
    xq, scale, zp = (dq.input(i) for i in range(3))
    scale_v = g.values[scale].const
    zp_v = g.values[zp].const if zp else np.zeros((), np.int8)
    kind = g.values[xq].dtype.name
    if (g.values[xq].const is not None or kind not in ("int8", "uint8") or scale_v is None or zp_v is None
            or np.asarray(scale_v).size != 1 or np.asarray(zp_v).size != 1 or g.values[dq.outputs[0]].dtype != dtypes.FP32):
        return False
    value = float(np.asarray(scale_v, np.float32).reshape(-1)[0])
    if not (np.isfinite(value) and value > 0):
        return False
    node.attrs.update(act_file_input=xq, act_file_scale=value, act_file_dtype=kind,
                      act_file_zero_point=int(np.asarray(zp_v).reshape(-1)[0]))
    return True


# ---------------------------------------------------------------------------------- MatMulNBits


def _matmul_nbits(g: Graph, node: Node) -> dict:
    a = node.attrs

    def fail(message: str, hint: str | None = None):
        raise ImportQuantizedError(message, node=node.name, op=node.op_id, hint=hint)

    bits, block = int(a.get("bits", 4)), int(a.get("block_size", 0))
    K, N = int(a["K"]), int(a["N"])
    if bits != 4:
        fail(f"bits={bits}: only 4-bit MatMulNBits has an integer kernel", "quantize the model with bits=4")
    if node.input(4):
        fail("g_idx (act-order: a permutation of k between blocks) is not supported",
             "quantize without act-order (desc_act) or reorder the weight offline")
    if block not in GROUPS:
        fail(f"block_size {block} is not one of {', '.join(map(str, GROUPS))} (the int4 group sizes the "
             "kernels implement)", "quantize the model with block_size 32, 64 or 128")
    if K % block:
        fail(f"K={K} is not a multiple of block_size {block}", "quantize with a block size that divides K")
    b, scales, zps = (g.values[x].const if x else None for x in (node.input(1), node.input(2), node.input(3)))
    if b is None or scales is None or (node.input(3) and zps is None):
        fail("the packed weight, scales and zero points must be constants (initializers); they are computed "
             "at run time here")
    x = g.values[node.inputs[0]]
    if x.dtype != dtypes.FP32:
        fail(f"activations of type {x.dtype.name}: the integer kernels take float32",
             "export the model in float32")
    nb = K // block
    if b.size != N * nb * block // 2 or scales.size != N * nb:
        fail(f"B {list(b.shape)} / scales {list(scales.shape)} do not match N={N}, K={K}, block_size={block}")
    codes = unpack_bits(np.asarray(b, np.uint8).reshape(N, nb, -1), 4, block).reshape(N, K)
    s = np.asarray(scales, np.float32).reshape(N, nb)
    if zps is None:
        zp = None
    elif zps.dtype == np.uint8:     # packed like B: one row per output channel
        zp = unpack_bits(zps.reshape(N, -1), 4, nb).astype(np.int64)
    else:                           # unpacked, the type of the scales
        zp = np.asarray(zps, np.float64).reshape(N, nb)
        if np.any(zp != np.rint(zp)) or zp.min() < 0 or zp.max() > 15:
            fail("float zero points that are not integers in [0, 15] have no integer kernel")
        zp = zp.astype(np.int64)

    q_codes = codes.T                                   # [K, N]
    base = node.input(1)
    consts = [g.add_const(f"{base}.scales", np.ascontiguousarray(s.T)).name]
    if zp is None or np.all(zp == 8):
        q = q_codes.astype(np.int8) - np.int8(8)
        fmt, family, exact_note = f"int4-g{block}", "int4", "int4 symmetric, q = code - 8"
    else:
        fmt, family, exact_note = f"int4-g{block}-asym", "uint4", "uint4 codes with their zero points"
    if family == "uint4":
        q = q_codes.astype(np.int8)
        consts.append(g.add_const(f"{base}.zero_points", np.ascontiguousarray(zp.T.astype(np.int8))).name)
    consts.insert(0, g.add_const(f"{base}.q", np.ascontiguousarray(q), dtypes.INT8).name)

    out, bias = node.outputs[0], node.input(5)
    y = _temp(g, out, "nobias") if bias else out
    _make_qlinear(g, node, node.inputs[0], consts, fmt, {"family": family, **_int4_spec(block)}, y)
    if bias:
        _after(g, node, "Add", [y, bias], out, "bias")
    return _entry(node, "com.microsoft.MatMulNBits", fmt, True, f"exact: {exact_note}")


# ---------------------------------------------------------------------------------- QDQ weights


def _qdq_linear(g: Graph, node: Node, dq: Node, cache: dict, transposed: bool = False) -> dict:
    """Rewrite MatMul/Gemm(x, [Transpose](DequantizeLinear(W, scale, zp))) into QLinear; returns the
    report entry."""
    op = node.op
    attrs = node.attrs
    wq = g.values[dq.inputs[0]].const
    w_out = g.values[dq.outputs[0]]
    why_not = None
    if op == "Gemm" and attrs.get("transA", 0):
        why_not = "a Gemm with transA"
    elif wq.ndim != 2:
        why_not = f"a weight of rank {wq.ndim} (only 2-D [K, N] weights have integer kernels)"
    elif not g.values[dq.inputs[0]].dtype.is_int:
        why_not = f"a {wq.dtype} DequantizeLinear input"
    elif w_out.dtype != dtypes.FP32 or g.values[node.inputs[0]].dtype != dtypes.FP32:
        why_not = "a non-float32 layer (the integer kernels take and give float32)"
    elif (g.values[node.inputs[0]].rank or 0) < 2:
        why_not = "activations of unknown rank or rank 1 (the kernels take [rows..., K])"
    if why_not:
        return _entry(node, op, "fp32", True, f"kept float: {why_not}")

    k_axis = (1 if op == "Gemm" and attrs.get("transB", 0) else 0) ^ int(transposed)
    key = (dq.outputs[0], k_axis)
    if key not in cache:
        cache[key] = _qdq_weight(g, dq, wq, k_axis)
    consts, fmt, spec, exact, note = cache[key]

    out = node.outputs[0]
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    bias = node.input(2) if op == "Gemm" else None
    y = _temp(g, out, "qlinear") if (bias or alpha != 1.0) else out
    _make_qlinear(g, node, node.inputs[0], consts, fmt, spec, y)
    last = node
    if alpha != 1.0:
        scaled = _temp(g, out, "alpha") if bias else out
        a = g.add_const(f"{node.name}.alpha", np.array(alpha, np.float32)).name
        last = _after(g, last, "Mul", [y, a], scaled, "alpha")
        y = scaled
    if bias:
        if beta != 1.0:
            c = g.values[bias]
            cb = g.add_value(g.unique_name(f"{bias}.beta"), c.dtype, c.shape).name
            bconst = g.add_const(f"{node.name}.beta", np.array(beta, np.float32)).name
            last = _after(g, last, "Mul", [bias, bconst], cb, "beta")
            bias = cb
        _after(g, last, "Add", [y, bias], out, "bias")
    return _entry(node, op, fmt, exact, note)


def _qdq_weight(g: Graph, dq: Node, wq: np.ndarray, k_axis: int):
    """(QLinear constant inputs, format, attrs, exact, note) for the DQ weight read with K on k_axis."""
    scale = np.asarray(g.values[dq.inputs[1]].const)
    zp_in = dq.input(2)
    zp = np.asarray(g.values[zp_in].const) if zp_in else np.zeros((), wq.dtype)
    axis, block = int(dq.attrs.get("axis", 1)) % 2, int(dq.attrs.get("block_size", 0) or 0)
    scale_full = np.broadcast_to(expand_scale(scale, wq.shape, axis, block), wq.shape).astype(np.float32)
    zp_full = np.broadcast_to(expand_scale(zp, wq.shape, axis, block), wq.shape).astype(np.int64)
    codes = np.asarray(wq).astype(np.int64)
    if k_axis == 1:                                     # stored [N, K] (Gemm transB): read as [K, N]
        scale_full, zp_full, codes = scale_full.T, zp_full.T, codes.T
    K, N = codes.shape
    q = codes - zp_full
    base = dq.inputs[0]

    def const(suffix, arr, dtype=None):
        return g.add_const(f"{base}.{suffix}", np.ascontiguousarray(arr), dtype).name

    if block and axis == k_axis and block in GROUPS and K % block == 0:   # blocks along K: int4 first
        s_g, z_g = scale_full[::block], zp_full[::block]
        if not np.any(z_g) and q.min() >= -8 and q.max() <= 7:
            consts = [const("q", q.astype(np.int8), dtypes.INT8), const("scales", s_g)]
            return consts, f"int4-g{block}", {"family": "int4", **_int4_spec(block)}, True, "exact: int4 blocks"
        offset = -int(min(codes.min(), z_g.min()))     # c - z = q for any common shift: start at 0
        c, z = codes + offset, z_g + offset
        if c.max() <= 15 and z.max() <= 15:
            consts = [const("q", c.astype(np.int8), dtypes.INT8), const("scales", s_g),
                      const("zero_points", z.astype(np.int8))]
            return (consts, f"int4-g{block}-asym", {"family": "uint4", **_int4_spec(block)}, True,
                    "exact: uint4 blocks with zero points")
    per_k_const = bool(np.all(scale_full == scale_full[:1]))      # one scale per output channel
    if per_k_const and q.size and q.min() >= -127 and q.max() <= 127:
        consts = [const("q", q.astype(np.int8), dtypes.INT8), const("scales", scale_full[0].copy())]
        spec = {"family": "int8", "bits": 8, "granularity": "per_channel", "axis": 1, "group_size": 0}
        how = "per tensor scale expanded to [N]" if scale.size == 1 else "per-channel scales"
        shift = "" if not np.any(zp_full) else ", zero points folded into q"
        return consts, "int8", spec, True, f"exact: int8 {how}{shift}"
    w = (q.astype(np.float32) * scale_full).astype(np.float32)          # what DequantizeLinear computes
    qw = quantize(w, "int8")
    err = float(np.abs(qw.dequantize() - w).max() / max(float(np.abs(w).max()), 1e-30))
    consts = [const("q", qw.q, dtypes.INT8), const("scales", qw.spec.scales)]
    spec = {"family": "int8", "bits": 8, "granularity": "per_channel", "axis": 1, "group_size": 0}
    if not per_k_const:
        why = "scales vary along K" + (f" (blocks of {block})" if block else "")
    else:
        why = f"q - zero point spans [{int(q.min())}, {int(q.max())}], beyond int8's [-127, 127]"
    return consts, "int8", spec, False, (f"re-quantized: {why}; dequantized and quantized again as int8 per "
                                         f"channel, max weight error {err:.2e} of max|W|")
