"""Reductions (ONNX opset 18 form: axes as an optional input) and ArgMax/ArgMin."""

from __future__ import annotations

import numpy as np

from .elementwise import _LOW_FLOATS
from .registry import axis_list, kernel


def _lowest(dtype):
    if dtype == np.bool_:
        return False
    return -np.inf if dtype.kind == "f" or dtype in _LOW_FLOATS else np.iinfo(dtype).min


def _highest(dtype):
    if dtype == np.bool_:
        return True
    return np.inf if dtype.kind == "f" or dtype in _LOW_FLOATS else np.iinfo(dtype).max


_REDUCERS = {
    "ReduceSum": lambda x, ax, kd: np.sum(x, axis=ax, keepdims=kd),
    "ReduceMean": lambda x, ax, kd: np.mean(x, axis=ax, keepdims=kd),
    "ReduceMax": lambda x, ax, kd: np.max(x, axis=ax, keepdims=kd, initial=_lowest(x.dtype)),
    "ReduceMin": lambda x, ax, kd: np.min(x, axis=ax, keepdims=kd, initial=_highest(x.dtype)),
    "ReduceProd": lambda x, ax, kd: np.prod(x, axis=ax, keepdims=kd),
    "ReduceL1": lambda x, ax, kd: np.sum(np.abs(x), axis=ax, keepdims=kd),
    "ReduceL2": lambda x, ax, kd: np.sqrt(np.sum(np.square(x), axis=ax, keepdims=kd)),
    "ReduceSumSquare": lambda x, ax, kd: np.sum(np.square(x), axis=ax, keepdims=kd),
    "ReduceLogSum": lambda x, ax, kd: np.log(np.sum(x, axis=ax, keepdims=kd)),
    "ReduceLogSumExp": lambda x, ax, kd: _logsumexp(x, ax, kd),
}


def _logsumexp(x, axes, keepdims):
    if x.size == 0:
        return np.log(np.sum(np.exp(x), axis=axes, keepdims=keepdims))
    peak = np.max(x, axis=axes, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0)
    out = np.log(np.sum(np.exp(x - peak), axis=axes, keepdims=True)) + peak
    return out if keepdims else np.squeeze(out, axis=axes)


def _make(op, reduce_fn):
    def run(node, x, axes=None):
        keepdims = bool(node.attrs.get("keepdims", 1))
        axes_t = axis_list(axes, x.ndim) if axes is not None and np.size(axes) else None
        if axes_t is None:
            if node.attrs.get("noop_with_empty_axes", 0):
                return x
            axes_t = tuple(range(x.ndim))
        work = x.astype(np.float32) if x.dtype in _LOW_FLOATS else x
        return np.asarray(reduce_fn(work, axes_t, keepdims)).astype(x.dtype)
    return run


for _op, _fn in _REDUCERS.items():
    kernel(_op)(_make(_op, _fn))


def _arg(pick):
    def run(node, x):
        axis = node.attrs.get("axis", 0) % x.ndim
        work = np.flip(x, axis) if node.attrs.get("select_last_index", 0) else x
        idx = pick(work, axis=axis)
        if node.attrs.get("select_last_index", 0):
            idx = x.shape[axis] - 1 - idx
        if node.attrs.get("keepdims", 1):
            idx = np.expand_dims(idx, axis)
        return idx.astype(np.int64)
    return run


kernel("ArgMax")(_arg(np.argmax))
kernel("ArgMin")(_arg(np.argmin))
