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

Rounding is numpy's round-half-to-even. All scales are float32 and strictly positive: an
all-zero group/channel/tensor gets scale 1.0 (any positive value is lossless there, and a zero
scale would divide by zero downstream).
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


@dataclass(frozen=True)
class Int4Grouped(WeightFormat):
    """int4 with one scale per group of ``group_size`` k for each output column.

    Symmetric: scale = absmax / 7, q = round(w / scale) in [-7, 7]. The storage range is
    [-8, 7] but -8 is never produced: |w / scale| <= 7. (Using -8 would need scale = absmax / 8
    with clipping of the positive side, which breaks the scale/2 error bound.)

    Asymmetric (uint4): the range [min, max] is first widened to include 0 (so 0 is exactly
    representable and the zero point lands in [0, 15] without clipping), then
    scale = (max - min) / 15, zp = clip(round(-min / scale), 0, 15), q = clip(round(w / scale) + zp, 0, 15).
    """

    group_size: int = 128

    @property
    def qrange(self) -> tuple[int, int]:
        return (-7, 7) if self.symmetric else (0, 15)

    def quantize(self, w: np.ndarray) -> QuantizedWeight:
        w = check_weight(w)
        g = _groups(w, self.group_size)
        if self.symmetric:
            scale = _positive(np.abs(g).max(axis=1) / np.float32(7))  # [K/G, N]
            q = np.clip(_round_div(g, scale[:, None, :]), -7, 7)
            zp = None
        else:
            lo = np.minimum(g.min(axis=1), 0)
            hi = np.maximum(g.max(axis=1), 0)
            scale = _positive((hi - lo) / np.float32(15))
            zp = np.clip(np.rint(-lo.astype(np.float64) / scale), 0, 15)
            q = np.clip(_round_div(g, scale[:, None, :]) + zp[:, None, :], 0, 15)
            zp = zp.astype(np.int8)
        q = q.reshape(w.shape).astype(np.int8)
        fmt = "int4" if self.symmetric else "uint4"
        spec = QuantSpec(fmt, 4, "per_group", axis=0, group_size=self.group_size, scales=scale, zero_points=zp)
        return QuantizedWeight(self.name, q, spec, 4, signed=self.symmetric)


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
                                   f"scale = absmax/7 per {g} k, q in [-7, 7] (-8 unused)", group_size=g))
        formats.append(Int4Grouped(f"int4-g{g}-asym", 4, "per_group", False, "nibble code q, 2 per byte, low first",
                                   f"scale = (max-min)/15 per {g} k, uint4 zero point, q in [0, 15]", group_size=g))
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


def quantize(w: np.ndarray, format: str) -> QuantizedWeight:
    """Quantize a [K, N] float weight with the named format."""
    return get_format(format).quantize(w)


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
