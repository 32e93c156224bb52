"""Pack logical quantized values into storage bytes, and back.

Storage conventions (the kernels in the targets decode exactly these, see COOKBOOK §4):

* **Codes.** A logical value q becomes an unsigned *code* stored in a ``bits``-wide field:
    - signed 2-bit (ternary): ``code = q + 1``            (q in [-1, 1]; code 3 is reserved)
    - signed 4-bit (int4):    ``code = q + 8``            (offset binary, q in [-8, 7])
    - signed 8-bit (int8):    two's complement byte       (the int8 bit pattern, q in [-128, 127])
    - unsigned (``signed=False``): ``code = q``           (q in [0, 2**bits - 1], e.g. uint4)
  Offset binary for 2/4 bits (rather than two's complement) makes the decode a shift, a mask
  and one subtraction with no sign extension: ``q = ((byte >> (bits*j)) & mask) - offset``.
* **Linear layout** (:func:`pack`): ``P = 8 // bits`` values per byte; byte ``i`` field ``j``
  (bits ``[bits*j, bits*(j+1))``, low field first, i.e. low nibble first) holds element
  ``i*P + j`` along the packed axis. A length that is not a multiple of P is padded with q = 0.
* **Interleaved layout** (:func:`pack_interleaved`): along the last axis, in blocks of B bytes,
  byte ``blk*B + b`` field ``j`` holds element ``k = blk*B*P + j*B + b``. For fixed (blk, j) the
  B bytes and the B matching activations are contiguous and the shift is a constant, which is
  what lets the decode vectorize (about 10x faster than linear in the cookbook measurements).
"""

from __future__ import annotations

import numpy as np

SUPPORTED_BITS = (2, 4, 8)

# Offset added to a signed logical value to get its code (8-bit uses two's complement instead).
SIGNED_OFFSET = {2: 1, 4: 8, 8: 0}


def values_per_byte(bits: int) -> int:
    """P, the number of ``bits``-wide fields in one byte."""
    _check_bits(bits)
    return 8 // bits


def value_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """Inclusive range of logical values that a ``bits``-wide field can hold."""
    _check_bits(bits)
    if not signed:
        return 0, (1 << bits) - 1
    if bits == 8:
        return -128, 127
    if bits == 2:
        return -1, 1  # ternary; code 3 would decode to 2 and is reserved
    off = SIGNED_OFFSET[bits]
    return -off, (1 << bits) - 1 - off


def _check_bits(bits: int) -> None:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"unsupported bit width {bits}; supported: {', '.join(map(str, SUPPORTED_BITS))}")


def to_codes(q: np.ndarray, bits: int, signed: bool = True) -> np.ndarray:
    """Logical values -> unsigned field codes (uint8), after checking the range."""
    lo, hi = value_range(bits, signed)
    q = np.asarray(q)
    if q.size and (q.min() < lo or q.max() > hi):
        kind = "signed" if signed else "unsigned"
        raise ValueError(f"values out of range for {kind} {bits}-bit storage: [{q.min()}, {q.max()}] not in [{lo}, {hi}]")
    q = q.astype(np.int16)
    if signed and bits == 8:
        return q.astype(np.int8).view(np.uint8)
    return (q + (SIGNED_OFFSET[bits] if signed else 0)).astype(np.uint8)


def from_codes(codes: np.ndarray, bits: int, signed: bool = True) -> np.ndarray:
    """Unsigned field codes -> logical values (int8; uint4/uint2 fit, uint8 above 127 does not)."""
    codes = np.asarray(codes, dtype=np.uint8)
    if signed and bits == 8:
        return codes.view(np.int8)
    if not signed and bits == 8:
        raise ValueError("unsigned 8-bit values do not fit the int8 logical array")
    return (codes.astype(np.int16) - (SIGNED_OFFSET[bits] if signed else 0)).astype(np.int8)


def _pack_fields(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes [..., M, P] -> bytes [..., M]: field j goes to bits [bits*j, bits*(j+1))."""
    out = np.zeros(codes.shape[:-1], dtype=np.uint8)
    for j in range(codes.shape[-1]):
        out |= (codes[..., j] << np.uint8(bits * j)).astype(np.uint8)
    return out


def _unpack_fields(packed: np.ndarray, bits: int) -> np.ndarray:
    """bytes [..., M] -> codes [..., M, P], the inverse of :func:`_pack_fields`."""
    mask = np.uint8((1 << bits) - 1)
    shifts = np.arange(8 // bits, dtype=np.uint8) * np.uint8(bits)
    return (packed[..., None] >> shifts) & mask


def pack(q: np.ndarray, bits: int, axis: int = -1, signed: bool = True) -> np.ndarray:
    """Pack logical values along ``axis`` into bytes (linear layout, low field first).

    The packed axis has length ceil(n / P); the tail is padded with q = 0, so pass the
    original length to :func:`unpack` as ``count``.
    """
    P = values_per_byte(bits)
    q = np.moveaxis(np.asarray(q), axis, -1)
    codes = to_codes(q, bits, signed)
    n = codes.shape[-1]
    pad = -n % P
    if pad:
        fill = to_codes(np.zeros((), np.int8), bits, signed)
        codes = np.concatenate([codes, np.full(codes.shape[:-1] + (pad,), fill, np.uint8)], axis=-1)
    packed = _pack_fields(codes.reshape(codes.shape[:-1] + (-1, P)), bits)
    return np.ascontiguousarray(np.moveaxis(packed, -1, axis))


def unpack(packed: np.ndarray, bits: int, count: int, axis: int = -1, signed: bool = True) -> np.ndarray:
    """Exact inverse of :func:`pack`: the first ``count`` logical values along ``axis`` (int8)."""
    P = values_per_byte(bits)
    packed = np.moveaxis(np.asarray(packed, dtype=np.uint8), axis, -1)
    if not 0 <= count <= packed.shape[-1] * P or packed.shape[-1] != -(-count // P):
        raise ValueError(f"count {count} does not match {packed.shape[-1]} packed bytes of {bits}-bit values")
    codes = _unpack_fields(packed, bits).reshape(packed.shape[:-1] + (-1,))[..., :count]
    return np.ascontiguousarray(np.moveaxis(from_codes(codes, bits, signed), -1, axis))


def _check_interleave(k: int, bits: int, block_bytes: int) -> int:
    P = values_per_byte(bits)
    if block_bytes < 1:
        raise ValueError(f"block_bytes must be positive, got {block_bytes}")
    if k % (block_bytes * P):
        raise ValueError(
            f"K={k} is not a multiple of block_bytes*values_per_byte = {block_bytes}*{P} = {block_bytes * P}"
        )
    return P


def pack_interleaved(q: np.ndarray, bits: int, block_bytes: int, signed: bool = True) -> np.ndarray:
    """Pack the last axis (K, contiguous per output column, e.g. q.T of a [K, N] weight) interleaved.

    Byte ``blk*B + b``, field ``j`` holds element ``k = blk*B*P + j*B + b`` (B = block_bytes).
    K must be a multiple of B*P. Returns uint8 [..., K // P].
    """
    q = np.asarray(q)
    K = q.shape[-1]
    P = _check_interleave(K, bits, block_bytes)
    codes = to_codes(q, bits, signed).reshape(q.shape[:-1] + (K // (block_bytes * P), P, block_bytes))
    codes = np.swapaxes(codes, -1, -2)  # [..., blk, b, j]
    return _pack_fields(codes, bits).reshape(q.shape[:-1] + (K // P,))


def unpack_interleaved(packed: np.ndarray, bits: int, block_bytes: int, signed: bool = True) -> np.ndarray:
    """Exact inverse of :func:`pack_interleaved`: uint8 [..., K // P] -> int8 [..., K]."""
    packed = np.asarray(packed, dtype=np.uint8)
    P = values_per_byte(bits)
    K = packed.shape[-1] * P
    _check_interleave(K, bits, block_bytes)
    codes = _unpack_fields(packed.reshape(packed.shape[:-1] + (-1, block_bytes)), bits)  # [..., blk, b, j]
    codes = np.swapaxes(codes, -1, -2).reshape(packed.shape[:-1] + (K,))
    return from_codes(codes, bits, signed)
