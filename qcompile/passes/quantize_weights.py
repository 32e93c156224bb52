"""quantize_weights: turn the formats chosen by assign_precision into quantized weights.

  bf16                 the weight is rounded to bf16 (still fp32 in the IR; targets store it as bf16)
  int8, int4-*, ternary*   MatMul(x, W) -> qcompile.QLinear(x, q, scales[, zero_points]), q holding
                       logical values with the format's QuantSpec; targets pack q as they need.
                       Activations are quantized int8 per token at run time (attr activations=int8)

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
from ..quant.formats import bf16_bits_to_float32, float32_to_bf16_bits
from ..quant.gptq import gptq, layer_error
from .assign_precision import ATTR, PrecisionError


def _round_bf16(w: np.ndarray) -> np.ndarray:
    return bf16_bits_to_float32(float32_to_bf16_bits(w)).astype(np.float32)


def quantize_weights(g: Graph, rounding: str = "rtn", calibration=None,
                     activations: str = "int8") -> list[tuple[str, str]]:
    """Rewrite g in place; returns (node, what happened) for every layer that changed."""
    report = []
    for node in list(g.nodes):
        fmt = node.attrs.pop(ATTR, None)
        if fmt is None or fmt == "fp32":
            continue
        weight_at = 0 if node.op == "Gather" else 1
        w_value = g.values[node.inputs[weight_at]]
        w = np.asarray(w_value.const, np.float32)
        if fmt == "bf16":
            rounded = g.add_const(f"{w_value.name}.bf16", _round_bf16(w))
            node.inputs[weight_at] = rounded.name
            node.attrs[ATTR] = "bf16"          # targets store this weight as bf16
            report.append((node.name, "bf16"))
            continue
        if node.op == "Gemm":
            w = _gemm_as_matmul(g, node, w)
        elif node.op != "MatMul":
            raise PrecisionError(f"format {fmt} is only implemented for MatMul and Gemm layers yet", node=node.name,
                                 op=node.op, hint="use a plan file to keep this layer bf16 or fp32")
        qw = detect_ternary(w)
        why = "already ternary-valued: kept ternary losslessly" if qw is not None else fmt
        if qw is None:
            try:
                if rounding == "gptq" and calibration is not None and node.name in calibration:
                    qw = gptq(w, calibration[node.name].hessian, fmt, act_order=True)
                    why = f"{fmt}, gptq: output error {layer_error(w, qw, calibration[node.name].hessian):.2e} " \
                          f"(rtn {layer_error(w, quantize(w, fmt), calibration[node.name].hessian):.2e})"
                else:
                    qw = quantize(w, fmt)
            except ValueError as exc:
                raise PrecisionError(str(exc), node=node.name, op=node.op) from None
        _rewrite(g, node, qw, activations)
        report.append((node.name, why))
    g.prune_values()
    return report


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
