"""The C runtime compiled into every artifact (qc_runtime.h / qc_runtime.c).

Also provides :func:`checksum64`, the numpy twin of ``qc_checksum64`` (the
algorithm is documented in qc_runtime.h), used by the build to embed the
expected weights checksum.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

RUNTIME_DIR = Path(__file__).parent

_K = 0x9E3779B97F4A7C15
_P = 0xBF58476D1CE4E5B9
_M1 = 0xFF51AFD7ED558CCD
_M2 = 0xC4CEB9FE1A85EC53
_MASK = (1 << 64) - 1
_CHUNK_WORDS = 1 << 17  # 1 MiB of input per vectorized step (stays in cache)


def sources() -> list[Path]:
    """The runtime's C sources."""
    return [RUNTIME_DIR / "qc_runtime.c"]


def include_dirs() -> list[str]:
    """Include directories for compiling the runtime and code that uses it."""
    import tvm_ffi  # lazy: only needed when building

    return [str(RUNTIME_DIR), os.path.join(os.path.dirname(tvm_ffi.__file__), "include")]


def _as_bytes_view(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        arr = np.ascontiguousarray(data)
        return arr.reshape(-1).view(np.uint8)
    mv = memoryview(data)
    if not mv.c_contiguous:
        mv = memoryview(mv.tobytes())
    return np.frombuffer(mv.cast("B"), dtype=np.uint8)


def checksum64(data) -> int:
    """qc_checksum64 of the raw bytes of ``data`` (bytes, bytearray, memoryview
    or numpy array, C order).  Returns the value as a Python int."""
    buf = _as_bytes_view(data)
    n = int(buf.size)
    words = n // 8
    acc = 0
    if words:
        w = np.frombuffer(buf[: words * 8], dtype="<u8")
        step = min(_CHUNK_WORDS, words)
        # (i + 1) * K for i in [0, step): the per-chunk base is added below.
        ramp = (np.arange(1, step + 1, dtype=np.uint64) * np.uint64(_K)).astype(np.uint64)
        x = np.empty(step, dtype=np.uint64)
        t = np.empty(step, dtype=np.uint64)
        p = np.uint64(_P)
        for start in range(0, words, step):
            c = min(step, words - start)
            xs, ts = x[:c], t[:c]
            np.add(ramp[:c], np.uint64((start * _K) & _MASK), out=xs)
            np.add(xs, w[start : start + c], out=xs)
            np.right_shift(xs, np.uint64(31), out=ts)
            np.bitwise_xor(xs, ts, out=xs)
            np.multiply(xs, p, out=xs)
            np.right_shift(xs, np.uint64(29), out=ts)
            np.bitwise_xor(xs, ts, out=xs)
            acc += int(xs.sum(dtype=np.uint64))
    rest = n - words * 8
    if rest:
        tail = int.from_bytes(buf[words * 8 :].tobytes(), "little")
        acc += _mix((tail + (words + 1) * _K) & _MASK)
    return _finalize(acc, n)


def _finalize(acc: int, n: int) -> int:
    h = (acc & _MASK) ^ n ^ _K
    h ^= h >> 33
    h = (h * _M1) & _MASK
    h ^= h >> 33
    h = (h * _M2) & _MASK
    h ^= h >> 33
    return h


def _mix(x: int) -> int:
    x ^= x >> 31
    x = (x * _P) & _MASK
    x ^= x >> 29
    return x


def checksum64_reference(data) -> int:
    """Word-by-word pure-Python qc_checksum64 (slow; for tests)."""
    buf = _as_bytes_view(data).tobytes()
    n = len(buf)
    acc = 0
    for j in range(0, (n + 7) // 8):
        w = int.from_bytes(buf[8 * j : 8 * j + 8], "little")  # short last word: zero-padded
        acc = (acc + _mix((w + (j + 1) * _K) & _MASK)) & _MASK
    return _finalize(acc, n)
