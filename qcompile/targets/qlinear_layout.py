"""Packed weight layout of the quantized-linear C micro-kernels (artifact/runtime/qc_qlinear.c),
and a numpy reference of their math.  numpy only: no TVM here.

The op is y[M,N] = x[M,K] @ W[K,N] with quantized weights and int8 per-token activations.

Weight formats (logical integer q[k,n], stored code c, zero point zp):
  int4     q in [-8,7], groups of G consecutive k (G in 32/64/128), scales [K/G,N];  c = q+8, zp = 8
  uint4    q in [0,15], groups of G, scales [K/G,N], zero points [K/G,N] (0..15);    c = q,   zp = z[g,n]
  ternary  q in {-1,0,1}, one group (G = K), scale () or [N];                       c = q+1, zp = 1
  int8     q in [-127,127], one group (G = K), scales [N]; stored as the signed byte q itself

Activations, per row (mirrored bit-exactly by qc_quantize_rows, float32 throughout):
  amax = max|x|;  inv = 127/amax, xscale = amax/127  (both 0 when amax == 0)
  xq = rint(clamp(x*inv, -127, 127))  (round half to even; a NaN product becomes -127)
  xsum[g] = sum of xq over group g
  Static scales (activations "int8-static", qc_quantize_rows_static): amax is a constant clipping
  range for every row, the rest unchanged (|x| beyond amax saturates at +-127).
Integer part: I[m,g,n] = sum_{k in g} c[k,n]*xq[m,k] - zp(g,n)*xsum[m,g]   (= sum q*xq, exact int32)
Float part:   y[m,n] = xscale[m] * acc,  acc = fma(s[g,n], float(I[m,g,n]), acc) for g = 0, 1, ...

Packed layout (the contract with the kernel; repeated in qc_qlinear.h):
  bits b = 4 (int4/uint4), 2 (ternary), 8 (int8); v = 8/b codes per byte.
  A chunk is 64 bytes = 16 output columns x 4v consecutive k.  Byte i = nl*4 + j (nl: column in the
  16-column subtile, j in 0..3); its bit field f (bits [f*b, f*b+b)) holds the code of column
  subtile*16 + nl at k = chunk*4v + f*4 + j.  So field f of a chunk, after (byte >> f*b) & mask, is
  the 16 columns x 4 k block that one vpdpbusd (or two maddubs on 32-byte halves) consumes.
  Tiles: T = 4 subtiles per panel if N % 64 == 0, else 2 if N % 32 == 0, else 1 (tuning may choose
  a smaller T: more, narrower panels, for a better split over threads).  Panel p covers the
  columns [p*16T, (p+1)*16T).  Byte stream: for p: for chunk c in K/(4v): for t in T: chunk c of
  subtile p*T + t -- each panel is one contiguous stream that the kernel reads once, in order.
  scales float32 [N/16T, K/G, 16T]: scales[p, g, t*16+nl] = s[g, p*16T + t*16 + nl]
  zero_points (uint4 only) uint8, same shape and indexing; colsum (int8 only) int32 [N/16T, 16T]
  = sum over k of q[k,n] (the AVX-512 kernel feeds x+128 as the unsigned operand and subtracts 128*colsum).
  Requirements: N % 16 == 0, K % 4v == 0, G % 4v == 0, K % G == 0.

The kernel does not need aligned pointers (it uses unaligned loads), but the packer returns
64-byte-aligned weights and scales, which is what the artifact guarantees too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..quant.activations import quantize_per_token

# Family codes shared with qc_qlinear.h (QC_QL_INT8 ...).
FAMILY_CODES = {"int8": 0, "int4": 1, "uint4": 2, "ternary": 3}
QL_INT8, QL_INT4, QL_UINT4, QL_TERNARY = 0, 1, 2, 3
BITS = {"int8": 8, "int4": 4, "uint4": 4, "ternary": 2}
Q_RANGE = {"int8": (-127, 127), "int4": (-8, 7), "uint4": (0, 15), "ternary": (-1, 1)}
CODE_OFFSET = {"int8": 0, "int4": 8, "uint4": 0, "ternary": 1}
CHUNK_BYTES = 64
ALIGN = 64


@dataclass
class PackedQLinear:
    family: str
    bits: int
    group: int  # G (K for the one-group formats)
    K: int
    N: int
    tiles: int  # T
    weights: np.ndarray  # uint8 1-D, the panel streams back to back
    scales: np.ndarray  # float32 [N/16T, K/G, 16T]
    zero_points: np.ndarray | None  # uint8 [N/16T, K/G, 16T] (uint4 only)
    colsum: np.ndarray | None  # int32 [N/16T, 16T] (int8 only)

    @property
    def family_code(self) -> int:
        return FAMILY_CODES[self.family]

    @property
    def ngroups(self) -> int:
        return self.K // self.group

    @property
    def panels(self) -> int:
        return self.N // (16 * self.tiles)

    def logical_scales(self) -> np.ndarray:
        """Scales as [ngroups, N]."""
        return self.scales.transpose(1, 0, 2).reshape(self.ngroups, self.N)

    def logical_zero_points(self) -> np.ndarray:
        """Zero points as int64 [ngroups, N] (constants broadcast for int4/ternary; 0 for int8)."""
        if self.zero_points is not None:
            return self.zero_points.transpose(1, 0, 2).reshape(self.ngroups, self.N).astype(np.int64)
        return np.full((self.ngroups, self.N), CODE_OFFSET[self.family], np.int64)


def tiles_for(N: int) -> int:
    return 4 if N % 64 == 0 else 2 if N % 32 == 0 else 1


def _aligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `a` whose data starts on an ALIGN-byte boundary."""
    raw = np.empty(a.nbytes + ALIGN, np.uint8)
    off = (-raw.ctypes.data) % ALIGN
    out = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _to_panels(a: np.ndarray, T: int) -> np.ndarray:
    """[rows, N] -> [N/16T, rows, 16T]."""
    rows, N = a.shape
    return np.ascontiguousarray(a.reshape(rows, N // (16 * T), 16 * T).transpose(1, 0, 2))


def pack_qlinear(q, family, scales, zero_points=None, group_size=None, tiles: int | None = None) -> PackedQLinear:
    """Pack logical weights q (integer [K,N]) of `family` into the kernel layout (see module doc);
    `tiles` (T) defaults to tiles_for(N), a tuned schedule may pick another."""
    if family not in BITS:
        raise ValueError(f"unknown qlinear family {family!r} (expected one of {sorted(BITS)})")
    q = np.asarray(q)
    if q.ndim != 2:
        raise ValueError(f"weights must be 2-D [K,N], got shape {q.shape}")
    K, N = q.shape
    bits = BITS[family]
    v = 8 // bits
    kc = 4 * v  # k per chunk
    lo, hi = Q_RANGE[family]
    if q.size and (q.min() < lo or q.max() > hi):
        raise ValueError(f"{family} weights must lie in [{lo}, {hi}]")
    if N <= 0 or N % 16:
        raise ValueError(f"N={N} must be a positive multiple of 16")
    if K <= 0 or K % kc:
        raise ValueError(f"K={K} must be a positive multiple of {kc} for {family}")
    if family in ("int4", "uint4"):
        if group_size is None:
            raise ValueError(f"{family} needs group_size")
        G = int(group_size)
        if G <= 0 or G % kc:
            raise ValueError(f"group size {G} must be a positive multiple of {kc} for {family}")
        if K % G:
            raise ValueError(f"K={K} is not a multiple of the group size {G}")
    else:
        if group_size is not None and group_size != K:
            raise ValueError(f"{family} has one group over K; group_size={group_size} != K={K}")
        G = K
    ng = K // G

    s = np.asarray(scales, np.float32)
    if family == "ternary":
        if s.shape not in ((), (N,)):
            raise ValueError(f"ternary scales must have shape () or ({N},), got {s.shape}")
        s = np.broadcast_to(s, (N,))
    elif family == "int8" and s.shape != (N,):
        raise ValueError(f"int8 scales must have shape ({N},), got {s.shape}")
    elif family in ("int4", "uint4") and s.shape != (ng, N):
        raise ValueError(f"{family} scales must have shape ({ng}, {N}), got {s.shape}")
    s = s.reshape(ng, N)

    T = tiles_for(N) if tiles is None else int(tiles)
    if T not in (1, 2, 4) or N % (16 * T):
        raise ValueError(f"tiles={T}: a panel must be 1, 2 or 4 subtiles of 16 columns that divide N={N}")
    P = N // (16 * T)
    zps = None
    if family == "uint4":
        if zero_points is None:
            raise ValueError("uint4 needs zero_points")
        z = np.asarray(zero_points)
        if z.shape != (ng, N):
            raise ValueError(f"uint4 zero points must have shape ({ng}, {N}), got {z.shape}")
        if z.size and (z.min() < 0 or z.max() > 15):
            raise ValueError("uint4 zero points must lie in [0, 15]")
        zps = _to_panels(z.astype(np.uint8), T)
    elif zero_points is not None:
        raise ValueError(f"{family} takes no zero_points")

    codes = (q.astype(np.int16) + CODE_OFFSET[family]).astype(np.uint8)  # int8: two's complement byte
    # k = c*4v + f*4 + j, n = (p*T + t)*16 + nl  ->  stream order [p, c, t, nl, j], fields f in the byte
    a = codes.reshape(K // kc, v, 4, P, T, 16).transpose(3, 0, 4, 5, 2, 1)
    packed = np.zeros(a.shape[:-1], np.uint8)
    for f in range(v):
        packed |= (a[..., f] << (f * bits)).astype(np.uint8)

    colsum = None
    if family == "int8":
        colsum = _aligned(q.astype(np.int64).sum(axis=0).astype(np.int32).reshape(P, 16 * T))
    return PackedQLinear(family, bits, G, K, N, T, _aligned(packed.reshape(-1)),
                         _aligned(_to_panels(s, T)), None if zps is None else _aligned(zps), colsum)


def unpack_codes(p: PackedQLinear) -> np.ndarray:
    """The stored codes [K,N] (uint8; for int8 the two's-complement bytes of q)."""
    v = 8 // p.bits
    kc, T, P = 4 * v, p.tiles, p.panels
    a = p.weights.reshape(P, p.K // kc, T, 16, 4)
    mask = (1 << p.bits) - 1
    fields = np.stack([(a >> (f * p.bits)) & mask for f in range(v)], axis=-1)  # [P, c, T, nl, j, f]
    return np.ascontiguousarray(fields.transpose(1, 5, 4, 0, 2, 3).reshape(p.K, p.N)).astype(np.uint8)


def quantize_rows(x, group, amax=None):
    """Per-token absmax int8: (xq int8 [M,K], xscale float32 [M], xsum int32 [M, K/group]).
    Bit-identical to qc_quantize_rows for finite x (same float32 operations in the same order).
    amax (a scalar): static scales with that clipping range for every row, bit-identical to
    qc_quantize_rows_static (|x| beyond amax saturates at +-127)."""
    x = np.asarray(x, np.float32)
    M, K = x.shape
    if group <= 0 or K % group:
        raise ValueError(f"K={K} is not a multiple of the group size {group}")
    xq, xscale = quantize_per_token(x, amax)
    xsum = xq.reshape(M, K // group, group).sum(axis=2, dtype=np.int32)
    return xq, xscale.reshape(M), xsum


def integer_dots(p: PackedQLinear, xq, xsum) -> np.ndarray:
    """I[m,g,n] = sum_{k in g} c*xq - zp*xsum  (int64; equals sum q*xq)."""
    M = xq.shape[0]
    codes = unpack_codes(p).astype(np.int64)
    if p.family == "int8":
        codes = codes.astype(np.uint8).view(np.int8).astype(np.int64)
    G, ng = p.group, p.ngroups
    xg = xq.astype(np.int64).reshape(M, ng, G).transpose(1, 0, 2)  # [g, M, G]
    D = np.matmul(xg, codes.reshape(ng, G, p.N)).transpose(1, 0, 2)  # [M, g, N]
    zp = np.zeros((ng, p.N), np.int64) if p.family == "int8" else p.logical_zero_points()
    return D - zp[None] * np.asarray(xsum, np.int64)[:, :, None]


def reference_qlinear(p: PackedQLinear, xq, xscale, xsum) -> np.ndarray:
    """The kernel's math in numpy: exact int64 integer part, float32 in group order.

    Tolerance vs the C: the integer part is identical; the C accumulates with fma (one rounding
    per group) where this does multiply then add (two), so per element
    |y_c - y_ref| <= 2 * ngroups * 2**-23 * xscale[m] * sum_g |s[g,n] * I[m,g,n]|  (+ denormal noise);
    it is exact (bit-identical) when every s*I and partial sum is representable, e.g. power-of-two
    scales with small integers."""
    I = integer_dots(p, xq, xsum).astype(np.float32)
    s = p.logical_scales()
    acc = np.zeros((xq.shape[0], p.N), np.float32)
    for g in range(p.ngroups):
        acc = acc + s[g][None, :] * I[:, g, :]
    return (np.asarray(xscale, np.float32)[:, None] * acc).astype(np.float32)
