"""Sliding-window geometry shared by Conv and pooling: output sizes and effective pads.

One function, used by the interpreter and the shape rules, so both agree on ONNX's auto_pad,
ceil_mode and dilation semantics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads_begin: tuple[int, ...]
    pads_end: tuple[int, ...]
    out: tuple[int, ...]


def window(spatial: tuple[int, ...], kernel, attrs: dict, ceil_mode: bool = False) -> Window:
    n = len(spatial)
    kernel = tuple(int(k) for k in kernel)
    strides = tuple(attrs.get("strides") or (1,) * n)
    dilations = tuple(attrs.get("dilations") or (1,) * n)
    pads = list(attrs.get("pads") or (0,) * (2 * n))
    auto_pad = attrs.get("auto_pad", "NOTSET") or "NOTSET"
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out = []
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        for i in range(n):
            size = -(-spatial[i] // strides[i])
            total = max((size - 1) * strides[i] + extent[i] - spatial[i], 0)
            small, big = total // 2, total - total // 2
            pads[i], pads[i + n] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
            out.append(size)
    else:
        if auto_pad == "VALID":
            pads = [0] * (2 * n)
        rounding = math.ceil if ceil_mode else math.floor
        for i in range(n):
            span = spatial[i] + pads[i] + pads[i + n] - extent[i]
            size = int(rounding(span / strides[i])) + 1
            if ceil_mode and (size - 1) * strides[i] >= spatial[i] + pads[i]:
                size -= 1        # the last window must start inside the (begin-padded) input
            out.append(max(size, 0))
    return Window(kernel, strides, dilations, tuple(pads[:n]), tuple(pads[n:]), tuple(out))
