"""Symbolic dims as linear expressions: "seq", "past+seq", "2*seq+1".

Shape rules write dims as strings; lowering, memory planning and the generated executor need
to evaluate them, bound them and print them as C. Only sums of integer multiples of symbols
are supported (what decoders and encoders produce); anything else is rejected by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TERM = re.compile(r"^\s*(?:(\d+)\s*\*\s*)?([A-Za-z_][A-Za-z0-9_.]*)\s*$|^\s*(-?\d+)\s*$")


@dataclass(frozen=True)
class Linear:
    const: int
    terms: tuple[tuple[str, int], ...]   # (symbol, coefficient), sorted by symbol

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(s for s, _ in self.terms)

    @property
    def is_symbol(self) -> bool:
        return self.const == 0 and len(self.terms) == 1 and self.terms[0][1] == 1

    def evaluate(self, env: dict[str, int]) -> int:
        return self.const + sum(c * env[s] for s, c in self.terms)

    def to_c(self, name_of=lambda s: s) -> str:
        parts = [(f"{c}*" if c != 1 else "") + name_of(s) for s, c in self.terms]
        if self.const or not parts:
            parts.append(str(self.const))
        return "(" + " + ".join(parts) + ")" if len(parts) > 1 else parts[0]


def parse(dim) -> Linear:
    """An int or a symbolic dim string -> Linear; ValueError names what is not linear."""
    if isinstance(dim, int):
        return Linear(dim, ())
    if not isinstance(dim, str):
        raise ValueError(f"dim {dim!r} is unknown")
    const, coeffs = 0, {}
    for piece in dim.split("+"):
        m = _TERM.match(piece)
        if not m:
            raise ValueError(f"dim '{dim}' is not a sum of symbols and integers")
        if m.group(3) is not None:
            const += int(m.group(3))
        else:
            coeffs[m.group(2)] = coeffs.get(m.group(2), 0) + int(m.group(1) or 1)
    return Linear(const, tuple(sorted(coeffs.items())))


def symbols_of(shape) -> set[str]:
    return {s for d in shape if not isinstance(d, int) for s in parse(d).symbols}


def evaluate(dim, env: dict[str, int]) -> int:
    return dim if isinstance(dim, int) else parse(dim).evaluate(env)


def upper_bound(dim, bounds: dict[str, int]) -> int:
    """Largest value of dim when every symbol is at most its bound (coefficients are >= 0)."""
    lin = parse(dim)
    missing = [s for s in lin.symbols if s not in bounds]
    if missing:
        raise ValueError(f"no upper bound for symbolic dim(s) {', '.join(missing)}")
    return lin.evaluate(bounds)
