"""Activation quantization done at run time by the kernels: int8 per token (per row), absmax.

The float32 operations and their order are the contract the C kernels (qc_quantize_rows) follow,
so numpy and C give bit-identical int8 rows and scales:

    amax = max |x[m, :]|;  inv = 127 / amax;  scale = amax / 127   (inv = scale = 0 for a zero row)
    xq[m, k] = clip(rint(x[m, k] * inv), -127, 127)                (round half to even)

Static scales (activations="int8-static", qc_quantize_rows_static): amax is a constant clipping
range chosen from calibration, the same for every row; the rest is the same operations, so values
beyond +-amax saturate at +-127.
"""

from __future__ import annotations

import math

import numpy as np

# 127 / amax must stay finite in float32 (else a zero times inf would be NaN): amax >= this
MIN_STATIC_AMAX = float(np.float32(127) / np.finfo(np.float32).max)


def static_amax(amax) -> np.float32:
    """A static clipping range as the float32 the kernels use; ValueError unless it is a positive,
    finite number whose 127/amax is finite in float32 (the checks qc_quantize_rows_static makes)."""
    try:
        value = float(amax)
    except (TypeError, ValueError):
        raise ValueError(f"the activation range must be a number, got {amax!r}") from None
    with np.errstate(over="ignore", divide="ignore"):
        a = np.float32(value)
        ok = math.isfinite(value) and a > 0 and np.isfinite(a) and np.isfinite(np.float32(127) / a)
    if not ok:
        raise ValueError(f"the activation range must be positive and finite (>= {MIN_STATIC_AMAX:.3g}), "
                         f"got {value!r}")
    return a


def quantize_per_token(x: np.ndarray, amax=None) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [..., K] -> (xq int8 [..., K], scale float32 [..., 1]); x ~= xq * scale.

    amax None: per-token absmax (each row's own max |x|).  amax a scalar: a static clipping range
    for every row (see static_amax); |x| beyond it saturates at +-127."""
    x = np.asarray(x, np.float32)
    if amax is None:
        amax = np.abs(x).max(axis=-1, keepdims=True) if x.shape[-1] else np.zeros(x.shape[:-1] + (1,), np.float32)
    else:
        amax = np.full(x.shape[:-1] + (1,), static_amax(amax), np.float32)
    nonzero = amax > 0
    safe = np.where(nonzero, amax, np.float32(1))
    inv = np.where(nonzero, np.float32(127) / safe, np.float32(0)).astype(np.float32)
    scale = np.where(nonzero, safe / np.float32(127), np.float32(0)).astype(np.float32)
    prod = x * inv
    with np.errstate(invalid="ignore"):
        prod = np.where(prod >= -127, prod, np.float32(-127))   # NaN -> -127, as the C kernel does
    xq = np.rint(np.minimum(prod, np.float32(127))).astype(np.int8)
    return xq, scale
