"""Stable, diffable text form of a Graph (`qcompile inspect --ir`, `--dump-ir`).

The same graph always prints the same text: nodes in graph order, constants sorted by name,
attributes sorted by key, large constants summarized by shape and a content hash.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .graph import Graph, Shape, Value

_INLINE_LIMIT = 8


def format_shape(shape: Shape) -> str:
    if shape is None:
        return "[?]"
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"


def format_type(value: Value) -> str:
    text = f"{value.dtype.name}{format_shape(value.shape)}"
    if value.quant is not None:
        text += f" quant({value.quant.describe()})"
    return text


def _format_array(arr: np.ndarray) -> str:
    if arr.size <= _INLINE_LIMIT and arr.dtype.kind != "O":
        flat = ", ".join(_format_scalar(x) for x in arr.reshape(-1))
        return f"[{flat}]" if arr.ndim else flat
    digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:12]
    return f"<{arr.size} elems sha256:{digest}>"


def _format_scalar(x) -> str:
    """Shortest text that round-trips in the value's own type (float32 prints as float32)."""
    if isinstance(x, (np.floating, float)):
        return str(x)
    if isinstance(x, np.generic):
        return str(x.item()) if x.dtype.kind in "iub" else str(x)
    return repr(x)


def format_attr(value) -> str:
    if isinstance(value, np.ndarray):
        return f"tensor<{value.dtype}{list(value.shape)}>{_format_array(value)}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_attr(v) for v in value) + "]"
    if isinstance(value, float):
        return str(np.float32(value))
    return repr(value)


def to_text(g: Graph) -> str:
    opsets = " ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(g.opsets.items()))
    lines = [f"graph {g.name} (opset {opsets})"]
    if g.dim_bounds:
        lines.append("  dims " + " ".join(f"{k}<={v}" for k, v in sorted(g.dim_bounds.items())))
    for name in g.inputs:
        lines.append(f"  input %{name}: {format_type(g.values[name])}")
    for v in sorted(g.constants(), key=lambda v: v.name):
        lines.append(f"  const %{v.name}: {format_type(v)} = {_format_array(v.const)}")
    for n in g.nodes:
        outs = ", ".join(f"%{o}: {format_type(g.values[o])}" if o in g.values else f"%{o}" for o in n.outputs)
        args = ", ".join(f"%{i}" if i else "_" for i in n.inputs)
        attrs = ""
        if n.attrs:
            attrs = " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in sorted(n.attrs.items())) + "}"
        lines.append(f"  {outs} = {n.op_id}({args}){attrs}  # {n.name}")
    for name in g.outputs:
        lines.append(f"  output %{name}: {format_type(g.values[name])}")
    return "\n".join(lines) + "\n"
