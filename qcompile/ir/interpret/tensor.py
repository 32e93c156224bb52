"""Data-movement ops: shapes, views, gathers, slicing, constants."""

from __future__ import annotations

import math

import numpy as np

from ..slicing import onnx_slice
from .registry import axis_list, kernel


def _ints(x) -> list[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


@kernel("Identity")
def _identity(node, x):
    return x


@kernel("Constant")
def _constant(node):
    a = node.attrs
    for key, make in (("value", np.asarray), ("value_float", lambda v: np.array(v, np.float32)),
                      ("value_floats", lambda v: np.array(v, np.float32)),
                      ("value_int", lambda v: np.array(v, np.int64)), ("value_ints", lambda v: np.array(v, np.int64)),
                      ("value_string", lambda v: np.array(v, object)), ("value_strings", lambda v: np.array(v, object))):
        if key in a:
            return make(a[key])
    raise ValueError("Constant has no value attribute")


@kernel("Reshape")
def _reshape(node, x, shape):
    target = _ints(shape)
    if not node.attrs.get("allowzero", 0):
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


@kernel("Flatten")
def _flatten(node, x):
    axis = node.attrs.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@kernel("Transpose")
def _transpose(node, x):
    perm = node.attrs.get("perm")
    return np.transpose(x, perm if perm is not None else None)


@kernel("Unsqueeze")
def _unsqueeze(node, x, axes):
    rank = x.ndim + len(_ints(axes))
    out = x
    for a in sorted(axis_list(axes, rank)):
        out = np.expand_dims(out, a)
    return out


@kernel("Squeeze")
def _squeeze(node, x, axes=None):
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=axis_list(axes, x.ndim))


@kernel("Concat")
def _concat(node, *xs):
    return np.concatenate(xs, axis=node.attrs["axis"])


@kernel("Split")
def _split(node, x, split=None):
    axis = node.attrs.get("axis", 0) % x.ndim
    n_out = len(node.outputs)
    if split is not None:
        sizes = _ints(split)
    else:
        n = node.attrs.get("num_outputs", n_out)
        chunk = -(-x.shape[axis] // n)
        sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(n)]
    return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@kernel("Slice")
def _slice(node, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(axis_list(axes, x.ndim)) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = onnx_slice(x.shape[axis], start, end, step)
    return x[tuple(index)]


@kernel("Shape")
def _shape(node, x):
    dims = np.array(x.shape, np.int64)
    rank = x.ndim
    start = node.attrs.get("start", 0)
    end = node.attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return dims[start:end]


@kernel("Size")
def _size(node, x):
    return np.array(x.size, np.int64)


@kernel("ConstantOfShape")
def _constant_of_shape(node, shape):
    value = node.attrs.get("value")
    value = np.zeros(1, np.float32) if value is None else np.asarray(value)
    return np.full(_ints(shape), value.reshape(-1)[0], dtype=value.dtype)


@kernel("Expand")
def _expand(node, x, shape):
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape)))).copy()


@kernel("Tile")
def _tile(node, x, repeats):
    return np.tile(x, _ints(repeats))


def _wrapped(indices: np.ndarray, dim) -> np.ndarray:
    """ONNX indices may count from the end; numpy's take wants them in range."""
    idx = indices.astype(np.int64)
    return np.where(idx < 0, idx + dim, idx)


@kernel("Gather")
def _gather(node, data, indices):
    axis = node.attrs.get("axis", 0) % data.ndim
    return np.take(data, _wrapped(indices, data.shape[axis]), axis=axis)


@kernel("GatherElements")
def _gather_elements(node, data, indices):
    axis = node.attrs.get("axis", 0) % data.ndim
    return np.take_along_axis(data, _wrapped(indices, data.shape[axis]), axis=axis)


@kernel("Range")
def _range(node, start, limit, delta):
    start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    count = max(int(math.ceil((float(limit) - float(start)) / float(delta))), 0)
    return (start + np.arange(count, dtype=np.int64).astype(start.dtype) * delta).astype(start.dtype)


@kernel("Trilu")
def _trilu(node, x, k=None):
    k = int(np.asarray(k).reshape(())) if k is not None else 0
    return np.triu(x, k) if node.attrs.get("upper", 1) else np.tril(x, k)


@kernel("CumSum")
def _cumsum(node, x, axis):
    axis = int(np.asarray(axis).reshape(())) % x.ndim
    work = np.flip(x, axis) if node.attrs.get("reverse", 0) else x
    out = np.cumsum(work, axis=axis, dtype=x.dtype)
    if node.attrs.get("exclusive", 0):
        out = out - work
    return np.flip(out, axis) if node.attrs.get("reverse", 0) else out


@kernel("Pad")
def _pad(node, x, pads, constant_value=None, axes=None):
    pads = _ints(pads)
    axes = list(axis_list(axes, x.ndim)) if axes is not None else list(range(x.ndim))
    half = len(pads) // 2
    width = [(0, 0)] * x.ndim
    for i, axis in enumerate(axes):
        width[axis] = (pads[i], pads[i + half])
    # negative pads crop
    crop = tuple(slice(-b if b < 0 else 0, x.shape[a] + e if e < 0 else None) for a, (b, e) in enumerate(width))
    x = x[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in width]
    mode = node.attrs.get("mode", "constant")
    if mode == "constant":
        fill = np.asarray(constant_value).reshape(-1)[0] if constant_value is not None and np.size(constant_value) else 0
        return np.pad(x, width, mode="constant", constant_values=fill)
    return np.pad(x, width, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])


@kernel("GatherND")
def _gather_nd(node, data, indices):
    b = node.attrs.get("batch_dims", 0)
    k = indices.shape[-1]
    n_batch = math.prod(data.shape[:b])
    flat_data = data.reshape((n_batch,) + data.shape[b:])
    flat_idx = _wrapped(indices.reshape(n_batch, -1, k), np.array(data.shape[b:b + k], np.int64))
    picked = [flat_data[i][tuple(flat_idx[i].T)] for i in range(n_batch)]
    return np.stack(picked).reshape(indices.shape[:-1] + data.shape[b + k:])


_SCATTER_REDUCE = {"none": lambda old, new: new, "add": np.add, "mul": np.multiply,
                   "max": np.maximum, "min": np.minimum}


@kernel("ScatterND")
def _scatter_nd(node, data, indices, updates):
    combine = _SCATTER_REDUCE[node.attrs.get("reduction", "none")]
    out = data.copy()
    k = indices.shape[-1]
    flat_idx = indices.astype(np.int64).reshape(-1, k)
    flat_upd = updates.reshape((-1,) + data.shape[k:])
    for idx, upd in zip(flat_idx, flat_upd):
        where = tuple(int(i) + (data.shape[a] if i < 0 else 0) for a, i in enumerate(idx))
        out[where] = combine(out[where], upd)
    return out
