"""Linear algebra and normalization: MatMul, Gemm, Softmax, LayerNorm and RMSNorm families."""

from __future__ import annotations

import numpy as np

from .elementwise import _LOW_FLOATS
from .registry import kernel


@kernel("MatMul")
def _matmul(node, a, b):
    if a.dtype in _LOW_FLOATS:
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return np.matmul(a, b)


@kernel("Gemm")
def _gemm(node, a, b, c=None):
    at = a.T if node.attrs.get("transA", 0) else a
    bt = b.T if node.attrs.get("transB", 0) else b
    y = node.attrs.get("alpha", 1.0) * (at @ bt)
    if c is not None:
        y = y + node.attrs.get("beta", 1.0) * c
    return y.astype(a.dtype)


def _softmax(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


@kernel("Softmax")
def _softmax_op(node, x):
    work = x.astype(np.float32) if x.dtype in _LOW_FLOATS else x
    return _softmax(work, node.attrs.get("axis", -1)).astype(x.dtype)


@kernel("LogSoftmax")
def _log_softmax(node, x):
    axis = node.attrs.get("axis", -1)
    work = x.astype(np.float32) if x.dtype in _LOW_FLOATS else x
    shifted = work - np.max(work, axis=axis, keepdims=True)
    return (shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))).astype(x.dtype)


@kernel("Hardmax")
def _hardmax(node, x):
    axis = node.attrs.get("axis", -1) % x.ndim
    hot = np.zeros_like(x)
    np.put_along_axis(hot, np.expand_dims(np.argmax(x, axis=axis), axis), 1, axis=axis)
    return hot


def _norm_axes(node, x):
    axis = node.attrs.get("axis", -1) % x.ndim
    return tuple(range(axis, x.ndim))


def _stash(node, x):
    # stash_type 1 (the default) asks for fp32 statistics whatever the input type
    return x.astype(np.float32) if node.attrs.get("stash_type", 1) == 1 or x.dtype in _LOW_FLOATS else x


@kernel("LayerNormalization")
def _layer_norm(node, x, scale, bias=None):
    axes = _norm_axes(node, x)
    work = _stash(node, x)
    mean = np.mean(work, axis=axes, keepdims=True)
    var = np.mean(np.square(work - mean), axis=axes, keepdims=True)
    inv_std = 1 / np.sqrt(var + node.attrs.get("epsilon", 1e-5))
    y = (work - mean) * inv_std * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype), mean.astype(work.dtype), inv_std.astype(work.dtype)


@kernel("RMSNormalization", "SimplifiedLayerNormalization", "com.microsoft.SimplifiedLayerNormalization")
def _rms_norm(node, x, scale):
    axes = _norm_axes(node, x)
    work = _stash(node, x)
    inv_rms = 1 / np.sqrt(np.mean(np.square(work), axis=axes, keepdims=True) + node.attrs.get("epsilon", 1e-5))
    return (work * inv_rms * scale).astype(x.dtype), inv_rms.astype(work.dtype)


@kernel("BatchNormalization")
def _batch_norm(node, x, scale, bias, mean, var):
    view = (1, -1) + (1,) * (x.ndim - 2)
    eps = node.attrs.get("epsilon", 1e-5)
    training = node.attrs.get("training_mode", 0)
    if training:   # normalize with batch statistics; update the running ones
        axes = (0,) + tuple(range(2, x.ndim))
        batch_mean, batch_var = x.mean(axis=axes), x.var(axis=axes)
        momentum = node.attrs.get("momentum", 0.9)
        running = (mean * momentum + batch_mean * (1 - momentum), var * momentum + batch_var * (1 - momentum))
        mean, var = batch_mean, batch_var
    y = (x - mean.reshape(view)) / np.sqrt(var.reshape(view) + eps) * scale.reshape(view) + bias.reshape(view)
    if training:
        return y.astype(x.dtype), running[0].astype(x.dtype), running[1].astype(x.dtype)
    return y.astype(x.dtype)


@kernel("qcompile.Attention")
def _attention(node, q, k, v, mask=None):
    """softmax(q kᵀ · scale + mask) v over [batch, heads, seq, head_dim]; query head h reads
    key/value head h // (q_heads / kv_heads) (grouped-query attention)."""
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.matmul(q, np.swapaxes(k, -1, -2)) * np.float32(node.attrs["scale"])
    if mask is not None:
        scores = scores + mask
    return np.matmul(_softmax(scores, -1), v).astype(q.dtype)


@kernel("qcompile.Hadamard")
def _hadamard(node, x, mix):
    """x @ (mix ⊗ Sylvester(p)) along the last axis, p = n / m for the [m, m] `mix` (which carries
    the 1/sqrt(n) that makes the rotation orthogonal): an FWHT over p, then the small mix over m."""
    from ...quant.hadamard import fwht
    m = mix.shape[0]
    blocks = x.reshape(*x.shape[:-1], m, x.shape[-1] // m)
    mixed = np.einsum("...ad,ac->...cd", fwht(blocks.astype(np.float64)), mix.astype(np.float64))
    return mixed.reshape(x.shape).astype(x.dtype)
