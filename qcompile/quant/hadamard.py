"""Hadamard matrices of the sizes networks use, for rotating weights and activations (QuaRot).

An order-n Hadamard matrix H has entries ±1 and H Hᵀ = n I, so H / sqrt(n) is orthogonal. Powers of
two come from Sylvester's doubling (and have an O(n log n) transform); other sizes are
`known ⊗ Sylvester`, with the known factor built by Paley's constructions from a finite field
GF(q), q a prime power:

    Paley I   q ≡ 3 (mod 4): order q + 1        (12, 20, 24, 28, 32, 44, 48, 60, ..., 344 = 7³ + 1)
    Paley II  q ≡ 1 (mod 4): order 2 (q + 1)   (12, 20, 28, 36, 52, 60, 76, ...)

which covers SmolLM2 (576 = 36·16, 1536 = 12·128), Llama-2-7B's MLP (11008 = 344·32) and
TinyLlama's (5632 = 44·128). A size with no such factor is an error naming the size.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


class NoHadamardError(ValueError):
    """No construction here gives a Hadamard matrix of this order."""


# ---------------------------------------------------------------- GF(p^k)

def _prime_power(q: int) -> tuple[int, int] | None:
    """(p, k) with q = p**k for a prime p, else None."""
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)
    k, rest = 0, q
    while rest % p == 0:
        rest //= p
        k += 1
    return (p, k) if rest == 1 else None


def _polymulmod(a: list[int], b: list[int], mod: list[int], p: int) -> list[int]:
    """a * b mod (monic `mod`) over GF(p); polynomials as coefficient lists, lowest degree first."""
    out = [0] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] = (out[i + j] + x * y) % p
    k = len(mod) - 1
    for d in range(len(out) - 1, k - 1, -1):      # reduce from the top
        c = out[d]
        if c:
            for t in range(k + 1):
                out[d - k + t] = (out[d - k + t] - c * mod[t]) % p
    return (out + [0] * k)[:k]


def _irreducible(p: int, k: int) -> list[int]:
    """A monic irreducible polynomial of degree k over GF(p) (k <= 3: no root means irreducible)."""
    if k == 1:
        return [0, 1]
    if k > 3:
        raise NoHadamardError(f"GF({p}^{k}) is not supported (prime powers up to the cube only)")
    for n in range(p ** k):
        coeffs = [(n // p ** t) % p for t in range(k)] + [1]
        if all(sum(c * pow(x, t, p) for t, c in enumerate(coeffs)) % p for x in range(p)):
            return coeffs
    raise AssertionError("an irreducible polynomial exists for every degree")


def _quadratic_character(q: int) -> tuple[np.ndarray, np.ndarray]:
    """(chi, digits): chi[e] in {0, 1, -1} for every element e of GF(q) (elements numbered by
    their base-p digits), and digits[e] = those digits."""
    p, k = _prime_power(q)
    mod = _irreducible(p, k)
    digits = np.array([[(e // p ** t) % p for t in range(k)] for e in range(q)], np.int64)
    chi = np.zeros(q, np.int64)
    for e in range(1, q):
        x, acc, n = list(digits[e]), [1] + [0] * (k - 1), (q - 1) // 2
        while n:                                     # acc = x ** ((q - 1) / 2)
            if n & 1:
                acc = _polymulmod(acc, x, mod, p)
            x, n = _polymulmod(x, x, mod, p), n >> 1
        chi[e] = 1 if acc == [1] + [0] * (k - 1) else -1
    return chi, digits


def _jacobsthal(q: int) -> np.ndarray:
    """Q[i, j] = chi(e_i - e_j) over GF(q)."""
    p, _ = _prime_power(q)
    chi, digits = _quadratic_character(q)
    diff = (digits[:, None, :] - digits[None, :, :]) % p
    index = (diff * (p ** np.arange(digits.shape[1]))).sum(-1)
    return chi[index]


# ---------------------------------------------------------------- constructions

def _paley1(q: int) -> np.ndarray:
    Q = _jacobsthal(q)
    S = np.zeros((q + 1, q + 1), np.int64)
    S[0, 1:], S[1:, 0], S[1:, 1:] = 1, -1, Q
    return S + np.eye(q + 1, dtype=np.int64)


def _paley2(q: int) -> np.ndarray:
    Q = _jacobsthal(q)
    S = np.zeros((q + 1, q + 1), np.int64)
    S[0, 1:], S[1:, 0], S[1:, 1:] = 1, 1, Q
    zero, pm = np.array([[1, -1], [-1, -1]]), np.array([[1, 1], [1, -1]])
    return np.kron(S == 0, zero) + np.kron(S, pm)


def _known(m: int) -> np.ndarray | None:
    """A Hadamard matrix of order m from Sylvester or Paley, or None."""
    if m in (1, 2):
        return sylvester(m)
    if m % 4:
        return None
    pp = _prime_power(m - 1)
    if pp and (m - 1) % 4 == 3:
        return _paley1(m - 1)
    pp = _prime_power(m // 2 - 1)
    if pp and (m // 2 - 1) % 4 == 1:
        return _paley2(m // 2 - 1)
    return None


def sylvester(n: int) -> np.ndarray:
    """Order n = 2^k: H_2k = [[H, H], [H, -H]] (the Walsh-Hadamard matrix, natural order)."""
    if n < 1 or n & (n - 1):
        raise NoHadamardError(f"{n} is not a power of two")
    h = np.ones((1, 1), np.int64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def factor(n: int) -> tuple[int, int]:
    """(m, 2^k) with n = m * 2^k and a known order-m matrix, m as small as possible."""
    if n < 1:
        raise NoHadamardError(f"no Hadamard matrix of order {n}")
    power = n & -n
    while power >= 1:
        m = n // power
        if _known(m) is not None:
            return m, power
        power //= 2
    raise NoHadamardError(f"no Hadamard matrix of order {n} is known here: {n} = {n // (n & -n)} x {n & -n} and "
                          f"no Paley construction gives an order m * 2^j dividing it")


def kron_factors(n: int) -> tuple[np.ndarray, int]:
    """(A, p): hadamard(n) == kron(A, sylvester(p)), A the small known factor (int, m x m)."""
    m, power = factor(n)
    return _known(m), power


@lru_cache(maxsize=32)
def _hadamard(n: int) -> np.ndarray:
    m, power = factor(n)
    small = _known(m)
    out = np.kron(small, sylvester(power)).astype(np.int8)
    out.setflags(write=False)
    return out


def hadamard(n: int) -> np.ndarray:
    """An order-n Hadamard matrix (int8 ±1), known factor ⊗ Sylvester. NoHadamardError if none."""
    return _hadamard(n)


def orthogonal(n: int) -> np.ndarray:
    """H / sqrt(n) as float64: an orthogonal matrix (its transpose is its inverse)."""
    return hadamard(n).astype(np.float64) / np.sqrt(n)


def fwht(x: np.ndarray) -> np.ndarray:
    """x @ sylvester(n) along the last axis in O(n log n) (n a power of two), unnormalized."""
    y = np.array(x, dtype=np.float64 if x.dtype == np.float64 else np.float32, copy=True)
    n = y.shape[-1]
    if n & (n - 1):
        raise NoHadamardError(f"fwht needs a power of two, got {n}")
    h = 1
    while h < n:
        v = y.reshape(*y.shape[:-1], n // (2 * h), 2, h)
        a, b = v[..., 0, :].copy(), v[..., 1, :].copy()
        v[..., 0, :], v[..., 1, :] = a + b, a - b
        h *= 2
    return y
