"""Pass registry: every pass is a function Graph -> Graph registered under a name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..ir.graph import Graph

PassFn = Callable[[Graph], Graph]


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    doc: str


PASSES: dict[str, PassInfo] = {}


def register_pass(name: str):
    def register(fn: PassFn) -> PassFn:
        if name in PASSES:
            raise ValueError(f"pass '{name}' registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        PASSES[name] = PassInfo(name, fn, doc)
        return fn
    return register


def get_pass(name: str) -> PassInfo:
    try:
        return PASSES[name]
    except KeyError:
        raise KeyError(f"unknown pass '{name}'; known: {', '.join(sorted(PASSES))}") from None
