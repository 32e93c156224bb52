"""Activation quantization done at run time by the kernels: int8 per token (per row), absmax.

The float32 operations and their order are the contract the C kernels (qc_quantize_rows) follow,
so numpy and C give bit-identical int8 rows and scales:

    amax = max |x[m, :]|;  inv = 127 / amax;  scale = amax / 127   (inv = scale = 0 for a zero row)
    xq[m, k] = clip(rint(x[m, k] * inv), -127, 127)                (round half to even)
"""

from __future__ import annotations

import numpy as np


def quantize_per_token(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x float32 [..., K] -> (xq int8 [..., K], scale float32 [..., 1]); x ~= xq * scale."""
    x = np.asarray(x, np.float32)
    amax = np.abs(x).max(axis=-1, keepdims=True) if x.shape[-1] else np.zeros(x.shape[:-1] + (1,), np.float32)
    nonzero = amax > 0
    safe = np.where(nonzero, amax, np.float32(1))
    inv = np.where(nonzero, np.float32(127) / safe, np.float32(0)).astype(np.float32)
    scale = np.where(nonzero, safe / np.float32(127), np.float32(0)).astype(np.float32)
    prod = x * inv
    with np.errstate(invalid="ignore"):
        prod = np.where(prod >= -127, prod, np.float32(-127))   # NaN -> -127, as the C kernel does
    xq = np.rint(np.minimum(prod, np.float32(127))).astype(np.int8)
    return xq, scale
