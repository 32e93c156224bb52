"""Weight formats: how a float32 linear-layer weight W [K, N] becomes low-bit numbers.

Target-neutral numpy only. W is the right operand of a MatMul: K input features (the reduction
axis, axis 0), N output features (axis 1). Granularity follows that:

* per-channel: one scale per output column n (QuantSpec axis=1, scales [N]);
* per-group:   one scale per ``group_size`` consecutive k for each n (QuantSpec axis=0,
  scales [K // G, N]); groups run along the reduction axis so a kernel applies one scale per
  partial dot product of G terms.

Every format returns a :class:`QuantizedWeight` whose ``q`` holds the *logical* values unpacked
(int8 for the integer formats; for bf16 the uint16 bit patterns), plus the IR's QuantSpec.
Packing to storage bytes is :mod:`qcompile.quant.packing`.

Rounding is numpy's round-half-to-even. All scales are float32 and nonzero, and positive except
symmetric int4's, whose sign puts a group's largest weight on the long side of [-8, 7]; an
all-zero group/channel/tensor gets scale 1.0 (any value is lossless there, and a zero scale
would divide by zero downstream).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir.quant import QuantSpec


@dataclass
class QuantizedWeight:
    """A quantized [K, N] weight: logical values ``q`` plus the spec that maps them to reals."""

    format: str  # registry name, e.g. "int4-g128"
    q: np.ndarray  # int8 [K, N] logical values (uint16 bf16 bit patterns for "bf16")
    spec: QuantSpec
    storage_bits: int  # field width in packed storage (2, 4, 8 or 16)
    signed: bool  # whether q is signed (selects the packing code convention)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.q.shape)

    def dequantize(self) -> np.ndarray:
        """Real values, float32 [K, N]: ``(q - zero_point) * scale``."""
        if self.spec.format == "bf16":
            return bf16_bits_to_float32(self.q)
        return self.spec.dequantize(self.q).astype(np.float32)

    def expanded_scales(self) -> np.ndarray:
        """The scale of every element, float32 [K, N] (the per-element rounding step)."""
        if self.spec.scales is None:
            raise ValueError(f"format {self.format} has no scales")
        return np.asarray(self.spec.expand(self.spec.scales, self.q.shape), dtype=np.float32)


# ---------------------------------------------------------------------------------- validation


def check_weight(w: np.ndarray) -> np.ndarray:
    """Validate a weight and return it as float32; errors name what is wrong."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"weight must be 2-D [K, N] (K input features, N output features), got shape {w.shape}")
    if not np.issubdtype(w.dtype, np.floating):
        raise ValueError(f"weight must be floating point, got dtype {w.dtype}")
    w = w.astype(np.float32)
    bad = ~np.isfinite(w)
    if bad.any():
        k, n = np.argwhere(bad)[0]
        raise ValueError(f"weight contains {int(bad.sum())} non-finite value(s) (NaN/Inf), first at [{k}, {n}]")
    return w


def _positive(scale: np.ndarray) -> np.ndarray:
    """Replace zero scales (all-zero blocks) by 1.0; see the module docstring for why."""
    scale = np.asarray(scale, dtype=np.float32)
    return np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)


def _round_div(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """round(w / scale) in float64 so the quotient itself adds no float32 error."""
    return np.rint(w.astype(np.float64) / scale.astype(np.float64))


# ---------------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class WeightFormat:
    """Base of all formats: the registry row plus ``quantize``."""

    name: str
    bits: int  # logical bits per weight (ternary: 2 storage bits, log2(3) ~ 1.58 information)
    granularity: str
    symmetric: bool
    storage: str  # how packed bytes hold it, see packing.py
    note: str = ""

    def describe(self) -> dict:
        """One table row for docs and the CLI."""
        return {
            "name": self.name,
            "bits": self.bits,
            "granularity": self.granularity,
            "symmetric": self.symmetric,
            "storage": self.storage,
            "note": self.note,
        }

    @property
    def qrange(self) -> tuple[int, int]:
        """Inclusive range of logical values quantize can produce."""
        raise NotImplementedError

    def quantize(self, w: np.ndarray) -> QuantizedWeight:
        raise NotImplementedError


@dataclass(frozen=True)
class BF16Format(WeightFormat):
    """bfloat16 by round-to-nearest-even of the float32 bits; no scales."""

    @property
    def qrange(self) -> tuple[int, int]:
        return 0, 0xFFFF

    def quantize(self, w: np.ndarray) -> QuantizedWeight:
        w = check_weight(w)
        q = float32_to_bf16_bits(w)
        if not np.isfinite(bf16_bits_to_float32(q)).all():
            raise ValueError("weight has values beyond the bfloat16 range (they round to Inf)")
        spec = QuantSpec("bf16", 16)
        return QuantizedWeight(self.name, q, spec, 16, signed=False)


def float32_to_bf16_bits(w: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest, ties to even."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = u + 0x7FFF + ((u >> 16) & 1)
    return (u >> 16).astype(np.uint16)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bf16 bit patterns (uint16) -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class Int8PerChannel(WeightFormat):
    """Symmetric int8, one scale per output column: scale = absmax / 127, q in [-127, 127].

    -128 is never produced, so the range is symmetric and negation is exact.
    """

    @property
    def qrange(self) -> tuple[int, int]:
        return -127, 127

    def quantize(self, w: np.ndarray) -> QuantizedWeight:
        w = check_weight(w)
        scale = _positive(np.abs(w).max(axis=0) / np.float32(127))  # [N]
        q = np.clip(_round_div(w, scale[None, :]), -127, 127).astype(np.int8)
        spec = QuantSpec("int8", 8, "per_channel", axis=1, scales=scale)
        return QuantizedWeight(self.name, q, spec, 8, signed=True)


def _groups(w: np.ndarray, group_size: int) -> np.ndarray:
    """[K, N] -> [K // G, G, N], after checking that G divides K."""
    K, N = w.shape
    if group_size < 1 or K % group_size:
        raise ValueError(f"group size {group_size} does not divide K={K} (the input-feature axis of the [K, N] weight)")
    return w.reshape(K // group_size, group_size, N)


# Candidate grids of the int4 scale search: the largest-magnitude weight of a group is mapped to
# -(8 + t) (symmetric) or the range to 15 + t steps (asymmetric), t in this set; t = -1 is the
# plain absmax/7 (range/14) grid, t = 0 llama.cpp Q4_0's absmax/-8.
SEARCH_STEPS = np.round(np.arange(-1.5, 1.51, 0.1), 2)


@dataclass(frozen=True)
class Int4Grouped(WeightFormat):
    """int4 with one scale per group of ``group_size`` k for each output column, all 16 levels.

    Symmetric: q in [-8, 7], w ~ q * s. Asymmetric (uint4): q in [0, 15], w ~ (q - zp) * s with an
    integer zero point zp in [0, 15] (so 0 is exactly representable).

    The scale is searched per group for the least weighted squared error (the idea of llama.cpp's
    k-quants): for every candidate grid of SEARCH_STEPS the weights are rounded to nearest, then
    the scale is refit by least squares to the codes it produced, and the candidate with the least
    error sum_k imp[k] (w - s q)^2 wins (after re-rounding to nearest for the refit scale). The
    largest weight may be clipped, so one weight's error is not bounded by s/2; the group's
    weighted error is the least among the candidates, which include the plain absmax/7 grid, so
    it is never worse than that.

    ``importance`` [K] weighs the input features (the mean square of the layer's inputs, from
    calibration or self-calibration). Without it each weight counts sqrt(mean(w^2) + w^2) (the
    group's mean square), as llama.cpp weighs it: an unweighted fit clips the large weights, which
    matter most (SmolLM2 W4A16 Lee / pydoc: unweighted 37.40 / 19.66, this 34.85 / 17.16).
    """

    group_size: int = 128

    @property
    def qrange(self) -> tuple[int, int]:
        return (-8, 7) if self.symmetric else (0, 15)

    def quantize(self, w: np.ndarray, importance: np.ndarray | None = None) -> QuantizedWeight:
        w = check_weight(w)
        g = _groups(w, self.group_size).astype(np.float64)
        if importance is None:        # llama.cpp's weighting: large weights matter more, never zero
            imp = np.sqrt(np.mean(g * g, axis=1, keepdims=True) + g * g)
        else:
            imp = _importance(importance, w.shape[0]).reshape(g.shape[0], g.shape[1], 1)
        if self.symmetric:
            q, scale, zp = _search_symmetric(g, imp)
        else:
            q, scale, zp = _search_asymmetric(g, imp)
        fmt = "int4" if self.symmetric else "uint4"
        spec = QuantSpec(fmt, 4, "per_group", axis=0, group_size=self.group_size, scales=scale,
                         zero_points=zp)
        return QuantizedWeight(self.name, q.reshape(w.shape).astype(np.int8), spec, 4, signed=self.symmetric)


def _importance(importance: np.ndarray, k: int) -> np.ndarray:
    imp = np.asarray(importance, np.float64).reshape(-1)
    if imp.shape != (k,) or not np.isfinite(imp).all() or (imp < 0).any():
        raise ValueError(f"importance must be {k} finite non-negative numbers (one per input feature)")
    # a feature never seen in calibration still counts a little, so its weights are not left to chance
    return imp + 1e-6 * max(float(imp.mean()), 1e-30)


def _best_scale(g, imp, grids, lo: int, hi: int):
    """The least-squares scale of every candidate grid's codes, and of those the one with the least
    weighted error, per group; then the codes re-rounded to nearest for it (never more error, since
    nearest is best per element, so the result is no worse than any candidate's grid, and it is
    round-to-nearest for its own scale, as GPTQ rounds). `grids` yields (codes, zero point)."""
    ig = imp * g
    gg = np.sum(ig * g, axis=1)
    best_err = best_s = best_zp = None
    for q, zp in grids:                      # zp: 0.0, or [ng, 1, N]
        d = q - zp
        num = np.sum(ig * d, axis=1)
        den = np.sum(imp * d * d, axis=1)
        ok = den > 0
        s = np.where(ok, num / np.where(ok, den, 1), 0)
        err = np.where(ok & (s != 0), gg - s * num, np.inf)      # sum imp (g - s d)^2 at the optimal s
        zp2 = zp[:, 0, :] if np.ndim(zp) else np.zeros_like(s)
        if best_err is None:
            best_err, best_s, best_zp = err, s, zp2
            continue
        take = err < best_err
        best_err, best_s, best_zp = np.where(take, err, best_err), np.where(take, s, best_s), np.where(take, zp2, best_zp)
    s = best_s.astype(np.float32).astype(np.float64)                 # as stored
    q = np.clip(np.rint(g / np.where(s != 0, s, 1)[:, None, :]) + best_zp[:, None, :], lo, hi)
    return q, s, best_zp


def _search_symmetric(g, imp):
    """q in [-8, 7]: the largest-magnitude weight m of a group goes to -(8 + t) for each t, so the
    scale has the sign of -m (as onnxruntime's and llama.cpp's 4-bit grids): the long side of the
    range is always the one holding the group's largest weight."""
    idx = np.abs(g).argmax(axis=1)[:, None, :]
    m = np.take_along_axis(g, idx, axis=1)[:, 0, :]                    # signed, [ng, N]
    safe = np.where(m != 0, m, 1.0)
    grids = ((np.clip(np.rint(g * (-(8 + t) / safe)[:, None, :]), -8, 7), 0.0) for t in SEARCH_STEPS)
    q, s, _ = _best_scale(g, imp, grids, -8, 7)
    zero = (m == 0) | (s == 0)                                         # all-zero groups: q = 0, scale 1
    return np.where(zero[:, None, :], 0, q), np.where(zero, 1.0, s).astype(np.float32), None


def _search_asymmetric(g, imp):
    """q in [0, 15], integer zp: the range [min, max] (widened to hold 0) spans 15 + t steps."""
    lo = np.minimum(g.min(axis=1), 0)
    hi = np.maximum(g.max(axis=1), 0)
    span = np.where(hi > lo, hi - lo, 1.0)

    def grids():
        for t in SEARCH_STEPS:
            s0 = span / (15 + t)
            zp = np.clip(np.rint(-lo / s0), 0, 15)
            yield np.clip(np.rint(g / s0[:, None, :]) + zp[:, None, :], 0, 15), zp[:, None, :]
    q, s, zp = _best_scale(g, imp, grids(), 0, 15)
    empty = (hi <= lo) | (s == 0)                                      # all-zero groups: q = zp = 8, scale 1
    s = np.where(empty, 1.0, s).astype(np.float32)
    zp = np.where(empty, 8, zp).astype(np.int8)
    return np.where(empty[:, None, :], 8, q), s, zp


@dataclass(frozen=True)
class Ternary(WeightFormat):
    """BitNet b1.58 absmean ternary: scale = mean(|W|), q = clip(round(W / scale), -1, 1).

    Per tensor, or per output column when ``per_channel``. Values beyond 1.5 * scale are
    clipped, so unlike the int formats the error is not bounded by scale / 2 there.
    """

    per_channel: bool = False

    @property
    def qrange(self) -> tuple[int, int]:
        return -1, 1

    def quantize(self, w: np.ndarray) -> QuantizedWeight:
        w = check_weight(w)
        absmean = np.abs(w.astype(np.float64)).mean(axis=0 if self.per_channel else None)
        scale = _positive(absmean)
        q = np.clip(_round_div(w, scale), -1, 1).astype(np.int8)
        return _ternary_weight(self.name, q, scale, self.per_channel)


def _ternary_weight(name: str, q: np.ndarray, scale: np.ndarray, per_channel: bool) -> QuantizedWeight:
    scale = np.asarray(scale, dtype=np.float32)
    if per_channel:
        spec = QuantSpec("ternary", 2, "per_channel", axis=1, scales=scale.reshape(-1))
    else:
        spec = QuantSpec("ternary", 2, "per_tensor", scales=scale.reshape(()))
    return QuantizedWeight(name, q, spec, 2, signed=True)


# ---------------------------------------------------------------------------------- registry


def _build_registry() -> dict[str, WeightFormat]:
    formats: list[WeightFormat] = [
        BF16Format("bf16", 16, "none", True, "uint16 bit pattern, one per 2 bytes", "round to nearest even"),
        Int8PerChannel("int8", 8, "per_channel", True, "int8 two's complement, one per byte",
                       "scale = absmax/127 per output column, q in [-127, 127]"),
    ]
    for g in (32, 64, 128):
        formats.append(Int4Grouped(f"int4-g{g}", 4, "per_group", True, "nibble code q+8, 2 per byte, low first",
                                   f"scale searched per {g} k (least squares), q in [-8, 7]", group_size=g))
        formats.append(Int4Grouped(f"int4-g{g}-asym", 4, "per_group", False, "nibble code q, 2 per byte, low first",
                                   f"scale searched per {g} k, uint4 zero point, q in [0, 15]", group_size=g))
    formats.append(Ternary("ternary", 2, "per_tensor", True, "2-bit code q+1, 4 per byte, low first",
                           "BitNet b1.58 absmean, one scale per tensor"))
    formats.append(Ternary("ternary-pc", 2, "per_channel", True, "2-bit code q+1, 4 per byte, low first",
                           "absmean per output column", per_channel=True))
    return {f.name: f for f in formats}


FORMATS: dict[str, WeightFormat] = _build_registry()


def get_format(name: str) -> WeightFormat:
    """Look a format up by name; the error lists the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown weight format '{name}'; known: {', '.join(FORMATS)}") from None


def quantize(w: np.ndarray, format: str, importance: np.ndarray | None = None) -> QuantizedWeight:
    """Quantize a [K, N] float weight with the named format. ``importance`` [K] (the mean square of
    each input feature, from calibration) weighs the error the int4 scale search minimizes; the
    formats without a search ignore it."""
    fmt = get_format(format)
    if isinstance(fmt, Int4Grouped):
        return fmt.quantize(w, importance)
    return fmt.quantize(w)


def describe_formats() -> list[dict]:
    """All registry rows, in registry order."""
    return [f.describe() for f in FORMATS.values()]


# ---------------------------------------------------------------------------------- detection


def detect_ternary(w: np.ndarray, rtol: float = 1e-5) -> QuantizedWeight | None:
    """Recognize a weight that already is {-s, 0, +s} per tensor or per output column.

    Why: exported BitNet-style models store ternary weights as floats; re-quantizing them with
    absmean would be lossy for nothing. An element counts as +-s when ||w| - s| <= rtol * s and as
    0 when |w| <= rtol * s, with s = max |w| of the tensor (or column), so s is one of the actual
    values and an exactly ternary weight round-trips bit-exactly. Per tensor is tried first.
    Returns None when any element fits neither class.
    """
    w = check_weight(w)
    a = np.abs(w)
    for per_channel in (False, True):
        s = _positive(a.max(axis=0) if per_channel else a.max())
        sb = s[None, :] if per_channel else s
        tol = np.float32(rtol) * sb
        is_zero = a <= tol
        is_one = np.abs(a - sb) <= tol
        if np.all(is_zero | is_one):
            q = (np.sign(w) * is_one * ~is_zero).astype(np.int8)
            name = "ternary-pc" if per_channel else "ternary"
            return _ternary_weight(name, q, s, per_channel)
    return None
