"""Search spaces: the schedule parameters of each kernel family, their rule-based defaults, and the
constraints that prune points which cannot compile for a workload. numpy-free, TVM-free data.

A point is a dict of parameter -> int. Every template reads its parameters with `.get(name,
default)`, so a point may omit parameters; `complete` fills them in.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Param:
    name: str
    choices: tuple[int, ...]
    default: int
    why: str


# What each family's template exposes.  `parallel` = 0 runs a kernel on the calling thread: at
# decode many kernels touch a few KiB, and a thread-pool launch costs more than the work.
PARAMS: dict[str, tuple[Param, ...]] = {
    "qlinear": (Param("tiles", (1, 2, 4), 4, "16-column subtiles per weight panel (one parallel task each)"),),
    "gemm": (Param("ku", (1, 2, 4, 8), 4, "k unroll of the register tile"),
             Param("vector", (8, 16), 16, "fp32 lanes per vector statement"),
             Param("parallel", (1, 0), 1, "run the panels on the thread pool")),
    "injective": (Param("vector", (8, 16, 32), 16, "fp32 lanes per vector statement"),
                  Param("chunk", (256, 1024, 4096), 1024, "elements per parallel task (flat loops)"),
                  Param("parallel", (1, 0), 1, "run the outer loop on the thread pool")),
    "rows": (Param("parallel", (1, 0), 1, "run the rows on the thread pool"),),
    "attention": (Param("vector", (16, 8, 0), 16, "lanes of the q.k and p.v products (0: scalar loops)"),
                  Param("parallel", (1, 0), 1, "run the rows on the thread pool")),
    "matmul": (Param("parallel", (1, 0), 1, "run the rows on the thread pool"),),
}
FAMILY_OF_KIND = {"gemm4": "gemm", "gemm1": "gemm", "injective": "injective", "fused": "injective",
                  "rows": "rows", "attention": "attention", "matmul": "matmul"}


@dataclass
class Space:
    family: str
    params: tuple[Param, ...]
    constraints: list[Callable[[dict], bool]] = field(default_factory=list)

    def default(self) -> dict:
        return {p.name: p.default for p in self.params}

    def contains(self, point: dict) -> bool:
        if set(point) - {p.name for p in self.params}:
            return False
        full = self.complete(point)
        return all(full[p.name] in p.choices for p in self.params) and all(c(full) for c in self.constraints)

    def complete(self, point: dict) -> dict:
        return {**self.default(), **point}

    def points(self) -> list[dict]:
        """Every valid point, the default first."""
        names = [p.name for p in self.params]
        out = [self.default()] if self.contains(self.default()) else []
        for values in itertools.product(*(p.choices for p in self.params)):
            point = dict(zip(names, values))
            if point not in out and self.contains(point):
                out.append(point)
        return out

    def neighbours(self, point: dict) -> list[dict]:
        """Valid points that differ from `point` in one parameter."""
        out = []
        for p in self.params:
            for c in p.choices:
                if c != point.get(p.name):
                    q = dict(point, **{p.name: c})
                    if self.contains(q):
                        out.append(q)
        return out


def space_for(family: str, shape: dict) -> Space:
    """The space of a workload: `shape` holds what the constraints need (qlinear: N; gemm: K and
    panel; injective: inner, the static innermost extent of a loop nest of rank > 1 (else 0), and
    dynamic_inner, whether that extent is only known at run time)."""
    params = PARAMS.get(family, ())
    cons: list[Callable[[dict], bool]] = []
    if family == "qlinear":
        n = shape["N"]
        cons.append(lambda p: n % (16 * p["tiles"]) == 0)
        widest = next(t for t in (4, 2, 1) if n % (16 * t) == 0)      # the packer's rule-based choice
        params = tuple(Param(p.name, p.choices, widest, p.why) for p in params)
    elif family == "gemm":
        k, panel = shape["K"], shape["panel"]
        cons += [lambda p: k % p["ku"] == 0, lambda p: panel % p["vector"] == 0]
    elif family == "injective":
        inner = shape.get("inner", 0)
        # the vector-rows path needs the lanes to divide the inner extent; the flat path needs a
        # chunk that holds whole vectors; a run-time inner extent uses neither
        cons.append(lambda p: p["chunk"] % p["vector"] == 0)
        if inner:          # rows path where the lanes divide it: chunk unused there
            cons.append(lambda p: inner % p["vector"] != 0 or p["chunk"] == 1024)
        elif shape.get("dynamic_inner"):
            cons.append(lambda p: p["vector"] == 16 and p["chunk"] == 1024)
    return Space(family, params, cons)
