"""The build's self-test: test vectors from the reference interpreter, checked against the library.

Every build writes `<prefix>.testvectors.npz`: small inputs (symbolic dims at a few tokens, token
ids within the embedding table, masks of ones, other tensors random) and the outputs the
reference interpreter computes for them on the graph the library was built from (quantized as
the library is: the weights' rounding is part of the reference, so the check is tight). Where the
library runs on this machine the build runs them before it calls the artifact done, so every
kernel the model uses has computed real data; `qcompile verify LIB` runs them again anywhere the
library loads (the target device).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import QCompileError
from .ir import dims

SIZES = (3, 2, 4, 5)        # non-batch symbolic dims, in name order: unequal, so a mix-up shows


class VerifyError(QCompileError):
    phase = "verify"


def example_inputs(graph, bounds: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """One input set: batch-like dims 1, other symbolic dims small and distinct (within bounds)."""
    rng = np.random.default_rng(seed)
    symbols = sorted({s for name in graph.inputs for d in (graph.values[name].shape or ())
                      if not isinstance(d, int) for s in dims.parse(d).symbols})
    env, k = {}, 0
    for s in symbols:
        if "batch" in s.lower():
            env[s] = 1
        else:
            env[s] = min(SIZES[k % len(SIZES)], bounds.get(s, SIZES[0]))
            k += 1
    rows = _index_ranges(graph)
    feeds = {}
    for name in graph.inputs:
        v = graph.values[name]
        shape = tuple(dims.evaluate(d, env) for d in v.shape or ())
        dtype = v.dtype.np_dtype
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif name in rows:
            feeds[name] = rng.integers(0, rows[name], shape).astype(dtype)
        elif "mask" in name.lower():
            feeds[name] = np.ones(shape, dtype)
        else:
            feeds[name] = np.zeros(shape, dtype)
    return feeds


def _index_ranges(graph) -> dict[str, int]:
    """Integer inputs used as Gather indices -> the table's row count (token ids and the like)."""
    out = {}
    for n in graph.nodes:
        if n.op == "Gather" and len(n.inputs) > 1 and n.inputs[1] in graph.inputs:
            table = graph.values[n.inputs[0]].shape
            axis = n.attrs.get("axis", 0)
            if table and isinstance(table[axis], int):
                out[n.inputs[1]] = min(out.get(n.inputs[1], table[axis]), table[axis])
    return out


def write(path: Path, feeds: dict, expected: dict, tolerance: float) -> None:
    arrays = {f"input:{k}": v for k, v in feeds.items()} | {f"output:{k}": v for k, v in expected.items()}
    arrays["meta"] = np.frombuffer(json.dumps({"tolerance": tolerance}).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@dataclass
class Report:
    errors: dict[str, float]     # output -> max |got - want| / max(1, max |want|)
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    def render(self) -> str:
        return ", ".join(f"{k} {v:.1e}" for k, v in self.errors.items()) + f" (tolerance {self.tolerance:.0e})"


def read(vectors: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """(inputs, expected outputs, tolerance) from a test-vector file, in the model's order."""
    data = np.load(vectors)
    meta = json.loads(bytes(data["meta"]).decode())
    part = lambda kind: {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith(kind + ":")}  # noqa: E731
    return part("input"), part("output"), meta["tolerance"]


def compare(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], tolerance: float) -> Report:
    """The largest relative error per output; a shape that differs is an error of its own."""
    errors = {}
    for name, want in expected.items():
        if got[name].shape != want.shape:
            raise VerifyError(f"output '{name}' has shape {got[name].shape}; the test vectors expect {want.shape}")
        errors[name] = _error(got[name], want)
    return Report(errors, tolerance)


def check(model, vectors: Path) -> Report:
    """Runs `model` (a loaded library) on the vectors."""
    feeds, expected, tolerance = read(vectors)
    return compare(model(**feeds), expected, tolerance)


def _error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got - want| / max(1, max |want|) over the elements whose reference is finite. Random
    inputs can take a Pow, Log or Sqrt outside its domain, and what a NaN becomes downstream is
    the runtime's choice (numpy's maximum keeps it, an x86 max instruction drops it: Relu(NaN)), so
    where the reference is NaN or infinite nothing is judged. A NaN or infinity in the library's
    output where the reference is a number is an infinite error."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    judged = np.isfinite(want)
    with np.errstate(invalid="ignore"):
        diff = np.nan_to_num(np.abs(got[judged] - want[judged]), nan=np.inf, posinf=np.inf)
    return float(diff.max(initial=0.0) / max(1.0, float(np.abs(want[judged]).max(initial=0.0))))
