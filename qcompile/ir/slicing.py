"""ONNX Slice index semantics, shared by the interpreter and the shape rules.

ONNX clamps differently from Python for negative steps (start -10 on a dim of 3 clamps to 0,
not to "before the start"), so every user goes through this one function.
"""

from __future__ import annotations


def onnx_slice(dim: int, start: int, end: int, step: int) -> slice:
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
    else:
        start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return slice(start, end if end >= 0 else None, step)


def slice_length(dim: int, start: int, end: int, step: int) -> int:
    return len(range(dim)[onnx_slice(dim, start, end, step)])
