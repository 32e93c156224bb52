"""quantize_weights: turn the formats chosen by assign_precision into quantized weights.

  bf16, fp16           the weight is rounded to bf16 / IEEE half (still fp32 in the IR; targets store
                       it in 16 bits and widen it in registers)
  int8, int4-*, ternary*   MatMul(x, W) -> qcompile.QLinear(x, q, scales[, zero_points]), q holding
                       logical values with the format's QuantSpec; targets pack q as they need.
                       Activations are quantized int8 per token at run time (attr activations=int8)
                       or, with activations="int8-static", with one calibrated clipping range per
                       layer (attr act_amax, from act_ranges: node name -> amax)

Weights that are already ternary-valued are kept ternary losslessly whatever was asked.
With rounding="gptq" and calibration statistics, integer weights are rounded by GPTQ (error
feedback weighted by the layer's input second moment) instead of to nearest; same formats.
activations="fp32" keeps the activations in float (weight-only, W4A16-style): the reference
interpreter runs it, the CPU kernels do not yet.
"""

from __future__ import annotations

import numpy as np

from ..ir import dtypes
from ..ir.graph import Graph, Node
from ..quant import detect_ternary, quantize
from ..quant.activations import static_amax
from ..quant.formats import bf16_bits_to_float32, float32_to_bf16_bits
from ..quant.gptq import gptq, layer_error
from .assign_precision import ATTR, PrecisionError


def _round_bf16(w: np.ndarray) -> np.ndarray:
    return bf16_bits_to_float32(float32_to_bf16_bits(w)).astype(np.float32)


def _round_fp16(w: np.ndarray) -> np.ndarray:
    """IEEE half, round to nearest even; a weight past its range is an error, never an inf."""
    if np.abs(w).max(initial=0.0) > np.finfo(np.float16).max:
        raise ValueError(f"a weight of magnitude {float(np.abs(w).max()):.3g} does not fit fp16 (at most 65504)")
    return w.astype(np.float16).astype(np.float32)


HALF = {"bf16": _round_bf16, "fp16": _round_fp16}     # formats stored as 16-bit floats, widened in registers


def quantize_weights(g: Graph, rounding: str = "rtn", calibration=None,
                     activations: str = "int8",
                     act_ranges: dict[str, float] | None = None, cache: dict | None = None) -> list[tuple[str, str]]:
    """Rewrite g in place; returns (node, what happened) for every layer that changed.

    activations="int8-static": every QLinear created gets act_amax = act_ranges[node name] (the
    clipping range of its input activations, chosen from calibration); a layer without a valid
    (positive, finite) range is a PrecisionError, raised before anything is rewritten. `cache` holds
    (node, format) -> QuantizedWeight already made for this graph's MatMul weights (sensitivity)."""
    amaxes = _static_ranges(g, act_ranges) if activations == "int8-static" else {}
    report = []
    for node in list(g.nodes):
        fmt = node.attrs.pop(ATTR, None)
        if fmt is None or fmt == "fp32":
            continue
        weight_at = 0 if node.op == "Gather" else 1
        w_value = g.values[node.inputs[weight_at]]
        w = np.asarray(w_value.const, np.float32)
        if fmt in HALF:
            try:
                rounded = g.add_const(f"{w_value.name}.{fmt}", HALF[fmt](w))
            except ValueError as exc:
                raise PrecisionError(str(exc), node=node.name, op=node.op,
                                     hint="use bf16, which keeps fp32's range") from None
            node.inputs[weight_at] = rounded.name
            node.attrs[ATTR] = fmt             # targets store this weight as bf16 / fp16
            report.append((node.name, fmt))
            continue
        if node.op == "Gemm":
            w = _gemm_as_matmul(g, node, w)
        elif node.op != "MatMul":
            raise PrecisionError(f"format {fmt} is only implemented for MatMul and Gemm layers yet", node=node.name,
                                 op=node.op, hint="use a plan file to keep this layer bf16 or fp32")
        try:
            qw = detect_ternary(w)
        except ValueError as exc:      # a NaN or Inf weight, named with its layer
            raise PrecisionError(str(exc), node=node.name, op=node.op) from None
        why = "already ternary-valued: kept ternary losslessly" if qw is not None else fmt
        if qw is None:
            try:
                if rounding == "gptq" and calibration is not None and node.name in calibration:
                    qw = gptq(w, calibration[node.name].hessian, fmt, act_order=True)
                    why = f"{fmt}, gptq: output error {layer_error(w, qw, calibration[node.name].hessian):.2e} " \
                          f"(rtn {layer_error(w, quantize(w, fmt), calibration[node.name].hessian):.2e})"
                elif cache is not None and (node.name, fmt) in cache and node.op == "MatMul":
                    qw = cache[node.name, fmt]
                else:
                    stats = calibration[node.name] if calibration is not None and node.name in calibration else None
                    qw = quantize(w, fmt, stats.mean_square() if stats is not None else None)
            except ValueError as exc:
                raise PrecisionError(str(exc), node=node.name, op=node.op) from None
        _rewrite(g, node, qw, activations)
        if node.name in amaxes:
            node.attrs["act_amax"] = amaxes[node.name]
        report.append((node.name, why))
    g.prune_values()
    return report


def _static_ranges(g: Graph, act_ranges: dict[str, float] | None) -> dict[str, float]:
    """node -> its static clipping range (the float32 value the kernels use) for every layer that
    will become a QLinear; PrecisionError naming the first one without a usable range."""
    act_ranges = act_ranges or {}
    out = {}
    for node in g.nodes:
        fmt = node.attrs.get(ATTR)
        if fmt is None or fmt in ("fp32", *HALF) or node.op not in ("MatMul", "Gemm"):
            continue
        hint = "calibrate (each layer's input absmax or a percentile of it) and pass act_ranges, " \
               "or use activations='int8' (per-token scales at run time)"
        if node.name not in act_ranges:
            raise PrecisionError("static activation scales need a calibrated range for this layer (none given)",
                                 node=node.name, op=node.op, hint=hint)
        try:
            out[node.name] = float(static_amax(act_ranges[node.name]))
        except ValueError as exc:
            raise PrecisionError(f"static activation scales need a calibrated range for this layer: {exc}",
                                 node=node.name, op=node.op, hint=hint) from None
    return out


def _gemm_as_matmul(g: Graph, node: Node, w: np.ndarray) -> np.ndarray:
    """Gemm(A, B, C) = alpha * A @ B' + beta * C -> MatMul(A, W) then Add(beta * C): returns W [K, N]."""
    a = node.attrs
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
        raise PrecisionError("a Gemm with transA or alpha != 1 cannot be quantized yet", node=node.name, op=node.op,
                             hint="use a plan file to keep this layer bf16 or fp32")
    w = w.T if a.get("transB", 0) else w
    bias = node.input(2)
    if bias:
        if g.values[bias].const is None:
            raise PrecisionError("a Gemm whose bias is computed at run time cannot be quantized yet",
                                 node=node.name, op=node.op)
        c = np.asarray(g.values[bias].const, np.float32)
        out = node.outputs[0]
        y = g.add_value(g.unique_name(f"{out}.nobias"), g.values[out].dtype, g.values[out].shape).name
        beta_c = g.add_const(f"{bias}.beta", (c * np.float32(a.get("beta", 1.0))).astype(np.float32)).name
        g.nodes.insert(g.nodes.index(node) + 1, Node(g.unique_name(f"{node.name}/bias"), "Add", [y, beta_c], [out]))
        node.outputs = [y]
    node.op, node.inputs = "MatMul", node.inputs[:2]
    node.attrs = {k: v for k, v in a.items() if k not in ("transA", "transB", "alpha", "beta")}
    return np.ascontiguousarray(w)


def _rewrite(g: Graph, node: Node, qw, activations: str = "int8") -> None:
    spec = qw.spec
    base = node.inputs[1]
    q = g.add_const(f"{base}.q", np.asarray(qw.q, np.int8), dtypes.INT8)
    inputs = [node.inputs[0], q.name, g.add_const(f"{base}.scales", np.asarray(spec.scales, np.float32)).name]
    if spec.zero_points is not None:
        inputs.append(g.add_const(f"{base}.zero_points", np.asarray(spec.zero_points)).name)
    node.op, node.domain, node.inputs = "QLinear", "qcompile", inputs
    node.attrs = {"format": qw.format, "family": spec.format, "bits": spec.bits, "granularity": spec.granularity,
                  "axis": spec.axis, "group_size": spec.group_size or 0, "activations": activations}
