"""GPTQ weight rounding (Frantar et al. 2022, "OPTQ") for the formats of :mod:`.formats`.

Round-to-nearest (RTN) rounds every weight on its own. GPTQ rounds the rows k = 0..K-1 of
W [K, N] in order and, after each row, moves that row's rounding error onto the rows not yet
rounded, weighted by the inverse Hessian H = XᵀX of the layer's inputs, so that the *output*
error tr((W - Wq)ᵀ H (W - Wq)) shrinks rather than the weight error. Numerics are float64, with
the upper Cholesky factor of the inverse of the damped Hessian and lazy block updates.

The result is laid out exactly as ``quantize(w, format)`` lays it out (format name, QuantSpec
granularity/axis/group size, int8 ``q`` in the format's range, storage bits), so it drops into
the rest of the compiler unchanged. Only the values of ``q`` (and, for int4, the scales) differ.

Scales:

* int8 per channel, ternary per tensor / per channel: computed once from the ORIGINAL weight by
  the format itself, so they are identical to RTN's. (They span the whole reduction axis, so
  there is no "current" value to take them from before the sweep has finished.)
* int4 grouped (sym and asym): the scale (and zero point) of a group is computed when the sweep
  enters the group's first row, from the CURRENT error-updated weights of that group, with the
  format's own formulas (the format's quantize run on the group's rows). The block size is
  rounded up to a multiple of the group size so a group never straddles a lazy block and those
  rows have received every pending update when the scale is taken.

Dead inputs (H[k, k] == 0: the input is always zero) get H[k, k] = 1 and W[k, :] = 0 for the
rounding, as in the reference implementation; for int4 the zeroed row then does not widen its
group's scale, while int8/ternary scales still come from the original weight.

With H diagonal (uncorrelated inputs) H^-1 is diagonal, no error crosses rows, and the result is
RTN's exactly. bf16 has no rounding choices to make and is rejected.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .formats import Int4Grouped, QuantizedWeight, check_weight, get_format


def _inverse_cholesky(h: np.ndarray, damp: float, tries: int = 4) -> np.ndarray:
    """Upper U with Uᵀ U = (H + d I)^-1, d = damp * mean(diag H); retries with 10x the damping."""
    mean_diag = float(np.mean(np.diag(h)))
    for t in range(tries):
        d = (damp if t == 0 else max(damp, 1e-3) * 10.0**t) * mean_diag
        try:
            L = np.linalg.cholesky(h + d * np.eye(len(h)))
            Li = np.linalg.inv(L)
            hinv = Li.T @ Li
            return np.linalg.cholesky((hinv + hinv.T) / 2).T
        except np.linalg.LinAlgError:
            continue
    raise ValueError(f"Hessian is not positive definite, even with {d:.3g} added to its diagonal "
                     f"({tries} tries of raising damp); check the calibration statistics")


def gptq(w: np.ndarray, hessian: np.ndarray, format: str, damp: float = 0.01, block: int = 128,
         act_order: bool = False) -> QuantizedWeight:
    """Quantize a [K, N] weight with GPTQ, given H = XᵀX [K, K] of the layer inputs x [M, K].

    act_order: round the rows with the largest input energy (diag H) first, so the rows that
    matter most are rounded before errors pile onto them; int4 scales are then RTN's (static
    groups: a group's rows are no longer contiguous in the sweep)."""
    fmt = get_format(format)
    if fmt.name == "bf16":
        raise ValueError("GPTQ does not support format 'bf16' (no scales, nothing to round); use quantize()")
    w = check_weight(w)
    K, N = w.shape
    h = np.asarray(hessian)
    if h.shape != (K, K):
        raise ValueError(f"hessian must be [K, K] = [{K}, {K}] for a weight of shape {w.shape}, got shape {h.shape}")
    if not np.issubdtype(h.dtype, np.number) or not np.isfinite(h).all():
        raise ValueError("hessian must be numeric and finite (no NaN/Inf)")
    if (np.diag(h) < 0).any():
        raise ValueError("hessian has negative diagonal entries; H = XᵀX must be positive semi-definite")
    if not (np.isfinite(damp) and damp >= 0):
        raise ValueError(f"damp must be a finite number >= 0, got {damp}")
    if int(block) < 1:
        raise ValueError(f"block must be >= 1, got {block}")

    rtn = fmt.quantize(w)  # layout template; its scales are the int8/ternary scales
    lo, hi = fmt.qrange
    grouped = isinstance(fmt, Int4Grouped)
    G = fmt.group_size if grouped else 1
    blk = -(-int(block) // G) * G  # groups never straddle a lazy block

    h = h.astype(np.float64)  # copies: caller's arrays untouched
    W = w.astype(np.float64)
    order = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(K)
    if act_order:
        return _act_order(fmt, rtn, W[order], h[np.ix_(order, order)], order, damp, blk)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    W[dead, :] = 0.0
    U = _inverse_cholesky(h, damp)

    scale = np.asarray(rtn.spec.scales, dtype=np.float64)  # [N] or scalar; replaced per group for int4
    zp = np.zeros(N)
    scales, zps = [], []
    Q = np.zeros((K, N), dtype=np.int8)
    for i1 in range(0, K, blk):
        i2 = min(i1 + blk, K)
        W1 = W[i1:i2]  # view: updated in place
        Err = np.zeros((i2 - i1, N))
        for i in range(i2 - i1):
            k = i1 + i
            if grouped and k % G == 0:
                gspec = fmt.quantize(W1[i:i + G].astype(np.float32)).spec
                scales.append(gspec.scales[0])
                scale = gspec.scales[0].astype(np.float64)
                if gspec.zero_points is not None:
                    zps.append(gspec.zero_points[0])
                    zp = gspec.zero_points[0].astype(np.float64)
            q = np.clip(np.rint(W1[i] / scale) + zp, lo, hi)
            Q[k] = q
            err = (W1[i] - (q - zp) * scale) / U[k, k]
            W1[i + 1:] -= np.outer(U[k, k + 1:i2], err)  # feed the error to this block's later rows
            Err[i] = err
        W[i2:] -= U[i1:i2, i2:].T @ Err  # lazy update of everything after the block

    spec = rtn.spec
    if grouped:
        spec = dataclasses.replace(spec, scales=np.stack(scales).astype(np.float32),
                                   zero_points=np.stack(zps).astype(np.int8) if zps else None)
    return QuantizedWeight(rtn.format, Q, spec, rtn.storage_bits, rtn.signed)


def _act_order(fmt, rtn: QuantizedWeight, W: np.ndarray, h: np.ndarray, order: np.ndarray, damp: float,
               blk: int) -> QuantizedWeight:
    """GPTQ over rows permuted by `order`, with RTN's (static) scales and zero points."""
    K, N = W.shape
    lo, hi = fmt.qrange
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    W[dead, :] = 0.0
    U = _inverse_cholesky(h, damp)
    per_row = np.broadcast_to(rtn.expanded_scales(), (K, N))[order].astype(np.float64)
    zps = rtn.spec.zero_points
    zp_row = (np.repeat(np.asarray(zps, np.float64), fmt.group_size, axis=0)[order] if zps is not None
              else np.zeros((K, N)))
    Q = np.zeros((K, N), dtype=np.int8)
    for i1 in range(0, K, blk):
        i2 = min(i1 + blk, K)
        W1 = W[i1:i2]
        Err = np.zeros((i2 - i1, N))
        for i in range(i2 - i1):
            k = i1 + i
            q = np.clip(np.rint(W1[i] / per_row[k]) + zp_row[k], lo, hi)
            Q[order[k]] = q
            err = (W1[i] - (q - zp_row[k]) * per_row[k]) / U[k, k]
            W1[i + 1:] -= np.outer(U[k, k + 1:i2], err)
            Err[i] = err
        W[i2:] -= U[i1:i2, i2:].T @ Err
    return QuantizedWeight(rtn.format, Q, rtn.spec, rtn.storage_bits, rtn.signed)


def layer_error(w: np.ndarray, wq, hessian: np.ndarray) -> float:
    """Relative output error tr(ΔᵀHΔ) / tr(WᵀHW), Δ = W - Wq (wq: array or QuantizedWeight)."""
    if isinstance(wq, QuantizedWeight):
        wq = wq.dequantize()
    w = np.asarray(w, dtype=np.float64)
    h = np.asarray(hessian, dtype=np.float64)
    delta = w - np.asarray(wq, dtype=np.float64)
    num = float(np.sum(delta * (h @ delta)))
    den = float(np.sum(w * (h @ w)))
    if den == 0:
        return 0.0 if num == 0 else float("inf")
    return num / den
