"""Convolution and pooling (N-d, NCHW-style layout), LRN and inference-mode Dropout."""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..window import Window, window
from .registry import kernel


def _patches(x: np.ndarray, w: Window, fill: float) -> np.ndarray:
    """[N, C, *out, *kernel] view of every window (padding with `fill`)."""
    nsp = len(w.kernel)
    extra_end = []
    for i in range(nsp):   # ceil_mode may need more trailing padding than the pads say
        needed = (w.out[i] - 1) * w.strides[i] + (w.kernel[i] - 1) * w.dilations[i] + 1
        extra_end.append(max(needed - (x.shape[2 + i] + w.pads_begin[i] + w.pads_end[i]), 0))
    width = [(0, 0), (0, 0)] + [(b, e + x_) for b, e, x_ in zip(w.pads_begin, w.pads_end, extra_end)]
    xp = np.pad(x, width, constant_values=fill)
    extent = tuple((k - 1) * d + 1 for k, d in zip(w.kernel, w.dilations))
    view = sliding_window_view(xp, extent, axis=tuple(range(2, 2 + nsp)))
    index = (slice(None), slice(None))
    index += tuple(slice(0, o * s, s) for o, s in zip(w.out, w.strides))
    index += tuple(slice(None, None, d) for d in w.dilations)
    return view[index]


_LETTERS = "defhijklpqrstuvwxyz"


@kernel("Conv")
def _conv(node, x, weight, bias=None):
    nsp = x.ndim - 2
    attrs = node.attrs
    geo = window(x.shape[2:], attrs.get("kernel_shape") or weight.shape[2:], attrs)
    groups = attrs.get("group", 1)
    cols = _patches(x, geo, 0)                                 # N, C, *out, *k
    n, c = x.shape[:2]
    m = weight.shape[0]
    cols = cols.reshape((n, groups, c // groups) + cols.shape[2:])
    wg = weight.reshape((groups, m // groups) + weight.shape[1:])
    o, k = _LETTERS[:nsp], _LETTERS[nsp:2 * nsp]
    acc = np.float64 if x.dtype == np.float64 else np.float32
    y = np.einsum(f"ngc{o}{k},gmc{k}->ngm{o}", cols.astype(acc), wg.astype(acc), optimize=True)
    y = y.reshape((n, m) + y.shape[3:])
    if bias is not None:
        y = y + bias.reshape((1, m) + (1,) * nsp)
    return y.astype(x.dtype)


def _pool_window(node, x) -> Window:
    return window(x.shape[2:], node.attrs["kernel_shape"], node.attrs, bool(node.attrs.get("ceil_mode", 0)))


@kernel("MaxPool")
def _max_pool(node, x):
    geo = _pool_window(node, x)
    nsp = len(geo.kernel)
    low = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    patches = _patches(x, geo, low)
    flat = patches.reshape(patches.shape[:2 + nsp] + (-1,))
    best = flat.argmax(axis=-1)[..., None]
    values = np.take_along_axis(flat, best, axis=-1)[..., 0]
    if len(node.outputs) < 2 or not node.outputs[1]:
        return values
    # Indices output: each maximum's flat position in x (spatial dims column-major if storage_order=1)
    n, c = x.shape[:2]
    spatial = np.arange(math.prod(x.shape[2:])).reshape(x.shape[2:], order="F" if node.attrs.get(
        "storage_order", 0) else "C")
    where = (np.arange(n * c).reshape(n, c, *(1,) * nsp) * spatial.size + spatial).astype(np.int64)
    where_patches = _patches(where, geo, -1)
    picked = np.take_along_axis(where_patches.reshape(flat.shape), best, axis=-1)[..., 0]
    return values, picked


@kernel("AveragePool")
def _average_pool(node, x):
    geo = _pool_window(node, x)
    nsp = len(geo.kernel)
    axes = tuple(range(-nsp, 0))
    total = _patches(x.astype(np.float64), geo, 0).sum(axis=axes)
    if node.attrs.get("count_include_pad", 0):
        # padded cells count, cells past the explicit pads (ceil_mode overhang) do not
        inside = np.pad(np.ones(x.shape[2:]), list(zip(geo.pads_begin, geo.pads_end)), constant_values=1)
        count = _patches(inside[None, None], Window(geo.kernel, geo.strides, geo.dilations, (0,) * nsp,
                                                    (0,) * nsp, geo.out), 0).sum(axis=axes)
    else:
        count = _patches(np.ones((1, 1) + x.shape[2:]), geo, 0).sum(axis=axes)
    return (total / count).astype(x.dtype)


@kernel("GlobalAveragePool")
def _global_average_pool(node, x):
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype)


@kernel("GlobalMaxPool")
def _global_max_pool(node, x):
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


@kernel("LRN")
def _lrn(node, x):
    size = node.attrs["size"]
    alpha, beta, bias = node.attrs.get("alpha", 1e-4), node.attrs.get("beta", 0.75), node.attrs.get("bias", 1.0)
    sq = np.square(x.astype(np.float64))
    before, after = (size - 1) // 2, math.ceil((size - 1) / 2)
    padded = np.pad(sq, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    window_sum = sum(padded[:, i:i + x.shape[1]] for i in range(size))
    return (x / (bias + alpha / size * window_sum) ** beta).astype(x.dtype)


@kernel("Dropout")
def _dropout(node, x, ratio=None, training_mode=None):
    if training_mode is not None and bool(np.asarray(training_mode)) and (ratio is None or float(ratio) > 0):
        raise ValueError("Dropout in training mode is random; qcompile compiles inference graphs")
    return x, np.ones(x.shape, dtype=bool)
