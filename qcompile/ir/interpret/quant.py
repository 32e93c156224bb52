"""Quantization ops: QuantizeLinear, DequantizeLinear, MatMulInteger, com.microsoft MatMulNBits."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from ..dtypes import from_numpy, from_onnx
from .elementwise import cast
from .registry import kernel


def expand_scale(scale: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int) -> np.ndarray:
    """Broadcast an ONNX Q/DQ scale (scalar, per-axis 1-D, or blocked) to the tensor shape."""
    scale = np.asarray(scale)
    if scale.ndim == 0 or scale.size == 1 and not block_size:
        return scale.reshape(())
    axis %= len(shape)
    if block_size:
        return np.repeat(scale, block_size, axis=axis).take(range(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = scale.size
    return scale.reshape(view)


def _int_range(dt):
    info = ml_dtypes.iinfo(dt) if dt.kind not in "iu" else np.iinfo(dt)
    return int(info.min), int(info.max)


@kernel("QuantizeLinear")
def _quantize(node, x, scale, zero_point=None):
    axis, block = node.attrs.get("axis", 1), node.attrs.get("block_size", 0)
    if zero_point is not None:
        out_dt = zero_point.dtype
    elif node.attrs.get("output_dtype"):
        out_dt = from_onnx(node.attrs["output_dtype"]).np_dtype
    else:
        out_dt = np.dtype(np.uint8)
    s = expand_scale(scale, x.shape, axis, block).astype(np.float32)
    y = x.astype(np.float32) / s
    out = from_numpy(out_dt)
    if out.name.startswith("fp8") or out.name == "fp4e2m1":
        if zero_point is not None:
            y = y + expand_scale(zero_point, x.shape, axis, block).astype(np.float32)
        return cast(y, out, bool(node.attrs.get("saturate", 1)))
    y = np.rint(y)
    if zero_point is not None:
        y = y + expand_scale(zero_point, x.shape, axis, block).astype(np.float32)
    lo, hi = _int_range(out_dt)
    return np.clip(y, lo, hi).astype(out_dt)


@kernel("DequantizeLinear")
def _dequantize(node, x, scale, zero_point=None):
    axis, block = node.attrs.get("axis", 1), node.attrs.get("block_size", 0)
    work = x.astype(np.float32)
    if zero_point is not None:
        work = work - expand_scale(zero_point, x.shape, axis, block).astype(np.float32)
    y = work * expand_scale(scale, x.shape, axis, block).astype(np.float32)
    out_dt = from_onnx(node.attrs["output_dtype"]).np_dtype if node.attrs.get("output_dtype") else scale.dtype
    return y.astype(out_dt)


@kernel("DynamicQuantizeLinear")
def _dynamic_quantize(node, x):
    lo, hi = min(0.0, float(np.min(x))), max(0.0, float(np.max(x)))
    scale = np.float32((hi - lo) / 255) if hi > lo else np.float32(1.0)
    zp = np.clip(np.rint(-lo / scale), 0, 255)
    y = np.clip(np.rint(x / scale) + zp, 0, 255).astype(np.uint8)
    return y, np.array(scale, np.float32), np.array(zp, np.uint8)


@kernel("MatMulInteger")
def _matmul_integer(node, a, b, a_zp=None, b_zp=None):
    a32 = a.astype(np.int32) - (a_zp.astype(np.int32) if a_zp is not None else 0)
    if b_zp is not None and b_zp.ndim == 1 and b_zp.size > 1:
        b_zp = b_zp.reshape(1, -1)
    b32 = b.astype(np.int32) - (b_zp.astype(np.int32) if b_zp is not None else 0)
    if a_zp is not None and a_zp.ndim == 1 and a_zp.size > 1:
        a32 = a.astype(np.int32) - a_zp.astype(np.int32).reshape(-1, 1)
    return np.matmul(a32, b32)


def unpack_bits(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unpack little-endian bit fields (lowest bits first) along the last axis, keeping `count`."""
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    shifts = np.arange(per_byte, dtype=np.uint8) * bits
    fields = (packed[..., None] >> shifts) & mask
    return fields.reshape(*packed.shape[:-1], -1)[..., :count]


def matmul_nbits_weight(b, scales, zero_points, n: int, k: int, bits: int, block: int) -> np.ndarray:
    """Dequantized [N, K] fp32 weight of a MatMulNBits node."""
    n_blocks = -(-k // block)
    q = unpack_bits(b.reshape(n, n_blocks, -1), bits, block).reshape(n, n_blocks * block).astype(np.float32)
    s = scales.reshape(n, n_blocks).astype(np.float32)
    if zero_points is None:
        zp = np.full((n, n_blocks), 2 ** (bits - 1), np.float32)
    elif zero_points.dtype == np.uint8:   # packed like B, one row per output channel
        zp = unpack_bits(zero_points.reshape(n, -1), bits, n_blocks).astype(np.float32)
    else:                                 # same type as A: unpacked, shaped like scales
        zp = zero_points.reshape(n, n_blocks).astype(np.float32)
    w = (q - np.repeat(zp, block, axis=1)) * np.repeat(s, block, axis=1)
    return w[:, :k]


@kernel("com.microsoft.MatMulNBits")
def _matmul_nbits(node, a, b, scales, zero_points=None, g_idx=None, bias=None):
    n, k = node.attrs["N"], node.attrs["K"]
    w = matmul_nbits_weight(b, scales, zero_points, n, k, node.attrs.get("bits", 4), node.attrs["block_size"])
    y = np.matmul(a.astype(np.float32), w.T)
    if bias is not None:
        y = y + bias.astype(np.float32)
    return y.astype(a.dtype)


@kernel("qcompile.QLinear")
def _qlinear(node, x, q, scales=None, zero_points=None):
    """y = x @ dequantize(q): the reference for every quantized linear-layer kernel.

    q holds logical values (int8 for int8/int4/ternary, bf16 for bf16) shaped [K, N]; scales and
    zero points follow the QuantSpec given by the attributes (granularity, axis, group_size).
    With activations="int8" x is first quantized per token (qcompile.quant.activations), as the
    kernels do; with "int8-static" every row uses the calibrated clipping range attr act_amax
    instead of its own max |x|; the products are then exact and summed in float64. With "int8-file"
    x is already integer (a QDQ file's activations): y = act_file_scale * (x - act_file_zero_point) @ w."""
    from ..quant import QuantSpec
    if scales is None:
        w = q.astype(np.float32)
    else:
        w = QuantSpec.of_qlinear(node.attrs, scales, zero_points).dequantize(q)
    acts = node.attrs.get("activations", "fp32")
    if acts == "int8-file":      # x: the file's int8/uint8 activations, with its scale and zero point
        centered = x.astype(np.int64) - int(node.attrs["act_file_zero_point"])
        y = np.matmul(centered.astype(np.float64), np.asarray(w, np.float64)) * float(node.attrs["act_file_scale"])
        return y.astype(np.float32)
    if acts in ("int8", "int8-static"):
        from ...quant.activations import quantize_per_token
        if acts == "int8-static" and node.attrs.get("act_amax") is None:
            raise ValueError(f"QLinear {node.name} has int8-static activations but no act_amax attribute")
        xq, xscale = quantize_per_token(x, node.attrs["act_amax"] if acts == "int8-static" else None)
        y = np.matmul(xq.astype(np.float64), np.asarray(w, np.float64)) * xscale.astype(np.float64)
        return y.astype(x.dtype)
    return np.matmul(x.astype(np.float32), w).astype(x.dtype)
