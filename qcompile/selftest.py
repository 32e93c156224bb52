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
from .targets.index_limits import index_inputs

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
    rows = {name: t.rows for name, t in index_inputs(graph).items()}
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


def write(path: Path, feeds: dict, expected: dict, tolerance: float, conditioning: float = 0.0) -> None:
    arrays = {f"input:{k}": v for k, v in feeds.items()} | {f"output:{k}": v for k, v in expected.items()}
    meta = {"tolerance": tolerance, "conditioning": conditioning}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@dataclass
class Report:
    errors: dict[str, float]     # output -> max |got - want| / max(1, max |want|)
    tolerance: float
    conditioning: float = 0.0    # how far the reference's outputs move on their own (see conditioning())
    steps: "StepReport | None" = None

    @property
    def end_to_end_ok(self) -> bool:
        return all(e <= self.tolerance for e in self.errors.values())

    @property
    def ill_conditioned(self) -> bool:
        """The end-to-end outputs move past the tolerance under float-level perturbations alone."""
        return self.conditioning > self.tolerance

    @property
    def ok(self) -> bool:
        """Every kernel matches on its own inputs (where traced), and the outputs match wherever
        the comparison can judge them; an ill-conditioned comparison needs the kernel-by-kernel one."""
        if self.steps is not None and not self.steps.ok:
            return False
        return self.end_to_end_ok or (self.steps is not None and self.ill_conditioned)

    def render(self) -> str:
        text = ", ".join(f"{k} {v:.1e}" for k, v in self.errors.items()) + f" (tolerance {self.tolerance:.0e})"
        if self.ill_conditioned and not self.end_to_end_ok:
            text += (f"; the reference's own outputs move by {self.conditioning:.1e} when its int8-rounded "
                     f"activations are perturbed by {PERTURBATION:.0e}, so end to end only the kernel-by-kernel "
                     "check can judge")
        if self.steps is not None:
            text += f"; kernel by kernel: {self.steps.render()}"
        elif self.ill_conditioned and not self.end_to_end_ok:
            text += " (not run: it needs the model, `qcompile verify LIB --model MODEL.onnx`)"
        return text


def read(vectors: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """(inputs, expected outputs, tolerance) from a test-vector file, in the model's order."""
    feeds, expected, meta = read_meta(vectors)
    return feeds, expected, meta["tolerance"]


def read_meta(vectors: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict]:
    data = np.load(vectors)
    meta = json.loads(bytes(data["meta"]).decode())
    part = lambda kind: {k.split(":", 1)[1]: data[k] for k in data.files if k.startswith(kind + ":")}  # noqa: E731
    return part("input"), part("output"), meta


def compare(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], tolerance: float,
            conditioning: float = 0.0) -> Report:
    """The largest relative error per output; a shape that differs is an error of its own."""
    errors = {}
    for name, want in expected.items():
        if got[name].shape != want.shape:
            raise VerifyError(f"output '{name}' has shape {got[name].shape}; the test vectors expect {want.shape}")
        errors[name] = _error(got[name], want)
    return Report(errors, tolerance, conditioning)


def check(model, vectors: Path, graph=None) -> Report:
    """Runs `model` (a loaded library) on the vectors; with the reference graph, traced and judged
    kernel by kernel too (check_steps)."""
    feeds, expected, meta = read_meta(vectors)
    if graph is None:
        return compare(model(**feeds), expected, meta["tolerance"], meta.get("conditioning", 0.0))
    outputs, records = model.trace(**feeds)
    report = compare(outputs, expected, meta["tolerance"], meta.get("conditioning", 0.0))
    report.steps = check_steps(graph, feeds, records, meta["tolerance"])
    return report


# How far the reference's own outputs move when every int8-quantized activation is perturbed by
# this relative amount: a library's float operations differ from numpy's at about this level
# (another summation order, an fma), so an output that moves further is not a test of the library.
PERTURBATION = 1e-6


def conditioning(graph, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray], seed: int = 1) -> float:
    """The largest relative change of the reference's outputs when the float input of every node
    that rounds it to integers (a layer whose activations are quantized to int8 at run time, a
    QDQ file's QuantizeLinear) is perturbed by PERTURBATION (0.0 when there is no such node: then
    nothing rounds, and the outputs move by about as much as their inputs).

    Rounding an activation to int8 is a step function: an element within a float rounding error of
    a half step lands on either side, and that one step, through a real model's outlier channels and
    later layers, can move the logits by 1e-2 (SmolLM2). Where this is above the tolerance, the
    end-to-end comparison cannot judge the library, and the node-by-node one (check_steps) does."""
    from .ir.interpret import run
    rng = np.random.default_rng(seed)
    quantized = {n.name for n in graph.nodes if _rounds_at_run_time(n) or
                 n.op in ("QuantizeLinear", "DynamicQuantizeLinear") and not n.domain}
    if not quantized:
        return 0.0

    def nudge(node, args):
        if node.name in quantized and args[0] is not None and args[0].dtype == np.float32:
            noise = rng.standard_normal(args[0].shape).astype(np.float32) * np.float32(PERTURBATION)
            args[0] = (args[0] * (1 + noise)).astype(np.float32)

    moved = run(graph, feeds, observe=nudge)
    return max((_error(moved[k], expected[k]) for k in expected), default=0.0)


def activation_error(graph, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float] | None:
    """How far int8 activations take the outputs from the same weights with float activations:
    per output, the error measure of the self-test between the reference (`expected`) and the graph
    with every dynamically quantized layer's activations left in float (None when there is none).
    onnxruntime runs a MatMulNBits file with float activations; this is what to expect between the
    two (the manifest records it)."""
    from .ir.interpret import run
    floating = graph.copy()
    layers = [n for n in floating.nodes if _rounds_at_run_time(n)]
    if not layers:
        return None
    for n in layers:
        n.attrs["activations"] = "fp32"      # Graph.copy copies each node's attrs
    moved = run(floating, feeds)
    return {k: _error(expected[k], moved[k]) for k in expected}


def _rounds_at_run_time(node) -> bool:
    """A quantized layer whose float activations the kernels round to int8 (per token or static)."""
    return node.op == "QLinear" and node.attrs.get("activations") in ("int8", "int8-static")


@dataclass
class StepReport:
    """The library's kernels checked one by one: every graph value a kernel wrote, against the
    reference interpreter's node run on the values the library itself computed before it."""
    local: dict[str, tuple[str, float]]    # value -> (node, relative error)
    dataflow: list[str]                    # reads that differ from what was written (overwritten memory)
    tolerance: float

    @property
    def ok(self) -> bool:
        return not self.dataflow and all(e <= self.tolerance for _, e in self.local.values())

    def worst(self) -> tuple[str, str, float]:
        name, (node, err) = max(self.local.items(), key=lambda kv: kv[1][1], default=("-", ("-", 0.0)))
        return name, node, err

    def render(self) -> str:
        bad = [(v, n, e) for v, (n, e) in self.local.items() if e > self.tolerance]
        parts = []
        if bad:
            parts.append(", ".join(f"{v} (node {n}) {e:.1e}" for v, n, e in bad[:5]) +
                         (f" and {len(bad) - 5} more" if len(bad) > 5 else "") + f" (tolerance {self.tolerance:.0e})")
        parts += self.dataflow[:3]
        if parts:
            return "; ".join(parts)
        name, node, err = self.worst()
        return f"{len(self.local)} values, largest error {err:.1e} at {name} (node {node})"


def check_steps(graph, feeds: dict[str, np.ndarray], records, tolerance: float) -> StepReport:
    """Judge a traced run (loader.Model.trace) kernel by kernel: the reference interpreter walks
    `graph`, and wherever the library wrote a value, compares it with the node's reference output
    and then carries on from the library's value (so a rounding choice made upstream is never
    counted against a later kernel). Every read is also compared, exactly, with what was written
    under that name, or with what the reference derives from written values (views, inputs):
    memory overwritten before its last use shows up there."""
    from .ir.interpret import run_node
    written: dict[str, np.ndarray] = {}
    first_reads: dict[str, tuple[str, np.ndarray]] = {}
    dataflow: list[str] = []
    for r in records:
        for name, arr in r.reads.items():
            if name in written:
                if not _same(arr, written[name]):
                    dataflow.append(f"node {r.node} read '{name}' changed since it was written")
            else:
                first_reads.setdefault(name, (r.node, arr))
        written.update(r.writes)
    env: dict[str, np.ndarray] = {**feeds, **{v.name: v.const for v in graph.constants()}}
    local: dict[str, tuple[str, float]] = {}
    for name, (node, arr) in first_reads.items():
        if name in env and not _same(arr, env[name]):
            dataflow.append(f"node {node} read '{name}' differs from the input given")
    for n in graph.nodes:
        outs = run_node(n, [env[x] if x else None for x in n.inputs])
        for name, want in zip(n.outputs, outs):
            if not name:
                continue
            env[name] = want
            if name in first_reads and not _same(first_reads[name][1], want):
                dataflow.append(f"node {first_reads[name][0]} read '{name}', which differs from what the values "
                                f"written before it give")
            got = written.get(name)
            if got is None:
                continue
            if got.shape != want.shape:
                dataflow.append(f"node {n.name} wrote '{name}' with shape {got.shape}; the reference gives "
                                f"{want.shape}")
                continue
            local[name] = (n.name, _error(got, want) if want.dtype.kind in "fc" else float(not _same(got, want)))
            env[name] = got.astype(want.dtype, copy=False)
    return StepReport(local, dataflow, tolerance)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "fc" or b.dtype.kind in "fc":
        return bool(np.array_equal(a.astype(np.float64), b.astype(np.float64), equal_nan=True))
    return bool(np.array_equal(a, b))


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
