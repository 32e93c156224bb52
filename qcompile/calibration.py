"""Calibration: run sample inputs through the reference interpreter and keep, for every linear
layer, what quantization decisions need.

Per distinct layer input (q/k/v share one, gate/up another) it keeps the second moment
H = sum x xᵀ over all rows (GPTQ's Hessian, and the weighting of a layer's output error), the
per-channel absmax, and a subsample of |x| from which static activation ranges are chosen
(percentile or MSE-optimal clipping). Samples come from an .npz of graph inputs or, for language
models, from token ids cut into windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .errors import QCompileError
from .ir import interpret
from .ir.graph import Graph

RESERVOIR = 1 << 18          # |x| values kept per input for range estimation


class CalibrationError(QCompileError):
    phase = "calibrate"


@dataclass
class InputStats:
    """What calibration learned about one linear-layer input (the activations, [rows, K])."""

    k: int
    rows: int = 0
    hessian: np.ndarray = field(default=None, repr=False)     # float64 [K, K]: sum of x xᵀ
    absmax: np.ndarray = field(default=None, repr=False)      # float32 [K]
    sample: np.ndarray = field(default=None, repr=False)      # float32 subsample of |x|

    def add(self, x: np.ndarray, rng: np.random.Generator) -> None:
        x = np.asarray(x, np.float32).reshape(-1, self.k)
        if self.hessian is None:
            self.hessian = np.zeros((self.k, self.k))
            self.absmax = np.zeros(self.k, np.float32)
            self.sample = np.zeros(0, np.float32)
        x64 = x.astype(np.float64)
        self.hessian += x64.T @ x64
        self.absmax = np.maximum(self.absmax, np.abs(x).max(axis=0))
        self.rows += x.shape[0]
        flat = np.abs(x).reshape(-1)
        take = min(flat.size, RESERVOIR // 4)
        self.sample = np.concatenate([self.sample, rng.choice(flat, take, replace=False)])
        if self.sample.size > RESERVOIR:
            self.sample = rng.choice(self.sample, RESERVOIR, replace=False)

    def mean_square(self) -> np.ndarray:
        """E[x_k^2] per input feature: how much each weight row's error reaches the output."""
        return np.diag(self.hessian) / max(self.rows, 1)

    def static_range(self, clip: str) -> float:
        """The int8 range of static activation scales: `percentile` (99.99th of |x|), `mse` (the
        clip with the least int8 error) or `max` (the largest |x| seen, nothing clipped)."""
        if clip == "max":
            if self.absmax is None:
                raise CalibrationError("no calibration rows reached this layer")
            return float(self.absmax.max())
        return self.clip_range(clip)

    def clip_range(self, method: str = "percentile", percentile: float = 99.99) -> float:
        """A static activation range: the percentile of |x|, or the clip minimizing int8 MSE."""
        if self.sample is None or not self.sample.size:
            raise CalibrationError("no calibration rows reached this layer")
        if method == "percentile":
            return float(np.percentile(self.sample, percentile))
        if method == "mse":
            top = float(self.sample.max())
            if top == 0:
                return 0.0
            best, best_err = top, np.inf
            for c in top * np.linspace(0.05, 1.0, 96):
                s = c / 127
                err = float(np.mean((np.clip(np.rint(self.sample / s), 0, 127) * s - self.sample) ** 2))
                if err < best_err:
                    best, best_err = c, err
            return best
        raise CalibrationError(f"unknown clipping method '{method}'; known: percentile, mse")


@dataclass
class Calibration:
    """Statistics per linear layer (by node name; layers reading one value share an InputStats)."""

    layers: dict[str, InputStats]
    samples: int
    rows: int

    def __getitem__(self, node_name: str) -> InputStats:
        return self.layers[node_name]

    def __contains__(self, node_name: str) -> bool:
        return node_name in self.layers


# ---------------------------------------------------------------------------------- samples


def lm_feeds(graph: Graph, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Feeds running token ids [T] through a causal LM from an empty cache (positions 0..T-1)."""
    from .artifact.decoder import NotADecoder, detect
    ids = np.asarray(ids, np.int64).reshape(1, -1)
    try:
        dec = detect(graph)
    except NotADecoder:
        ints = [x for x in graph.inputs if graph.values[x].dtype.name == "int64"]
        if len(ints) != 1:
            raise CalibrationError("token calibration needs a language model: one int64 token input, or a "
                                   "decoder with a KV cache") from None
        return {ints[0]: ids}
    feeds = {dec.tokens: ids}
    if dec.positions:
        feeds[dec.positions] = np.arange(ids.shape[1], dtype=np.int64)[None]
    if dec.mask:
        feeds[dec.mask] = np.ones_like(ids)
    for c in dec.caches:
        shape = [0 if i == c.axis else (1 if isinstance(d, str) else d)
                 for i, d in enumerate(graph.values[c.past].shape)]
        feeds[c.past] = np.zeros(shape, graph.values[c.past].dtype.np_dtype)
    return feeds


def read_tokens(path: str | Path) -> np.ndarray:
    """Token ids from .npy (integer array) or text (ids separated by spaces, commas or newlines)."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            ids = np.load(path)
        else:
            ids = np.array(path.read_text().replace(",", " ").split(), dtype=np.int64)
    except (OSError, ValueError) as exc:
        raise CalibrationError(f"cannot read token ids from '{path}': {exc}") from None
    if not np.issubdtype(ids.dtype, np.integer) or ids.size == 0:
        raise CalibrationError(f"'{path}' holds no integer token ids")
    return ids.reshape(-1).astype(np.int64)


def load_samples(path: str | Path, graph: Graph, seq_len: int = 512, max_samples: int = 8) -> list[dict]:
    """Calibration feeds from a file.

    .npz: arrays named like the graph inputs; an array with one more axis than its input holds
    several samples along axis 0. Inputs a decoder's session fills itself (empty caches, positions)
    may be left out. .npy/.txt: token ids, cut into windows of seq_len tokens."""
    path = Path(path)
    if not path.exists():
        raise CalibrationError(f"calibration file '{path}' does not exist")
    if path.suffix != ".npz":
        ids = read_tokens(path)
        windows = [ids[i:i + seq_len] for i in range(0, ids.size, seq_len)][:max_samples]
        return [lm_feeds(graph, w) for w in windows if w.size]
    with np.load(path) as data:
        arrays = dict(data)
    unknown = sorted(set(arrays) - set(graph.inputs))
    if unknown:
        raise CalibrationError(f"'{path}' has arrays {unknown} that are not graph inputs "
                               f"({', '.join(graph.inputs)})")
    counts = {n: (a.shape[0] if a.ndim == graph.values[n].rank + 1 else None) for n, a in arrays.items()}
    n_samples = {c for c in counts.values() if c is not None}
    if len(n_samples) > 1:
        raise CalibrationError(f"'{path}': arrays disagree on the number of samples: {counts}")
    total = n_samples.pop() if n_samples else 1
    samples = []
    for i in range(min(total, max_samples)):
        feeds = {n: (a[i] if counts[n] is not None else a) for n, a in arrays.items()}
        missing = [n for n in graph.inputs if n not in feeds]
        if missing:
            tokens = next((a for n, a in feeds.items() if graph.values[n].dtype.name == "int64"), None)
            if tokens is None:
                raise CalibrationError(f"'{path}' lacks inputs {missing}")
            filled = lm_feeds(graph, tokens)
            feeds = {**filled, **feeds}
            missing = [n for n in graph.inputs if n not in feeds]
            if missing:
                raise CalibrationError(f"'{path}' lacks inputs {missing}")
        samples.append(feeds)
    return samples


# ---------------------------------------------------------------------------------- collection


def collect(graph: Graph, samples: Iterable[dict], layers: Iterable[str] | None = None,
            progress: Callable[[int, int], None] | None = None, seed: int = 0) -> Calibration:
    """Run every sample through the reference interpreter; statistics of each linear layer's input."""
    from .passes.assign_precision import linear_layers, weight_k
    samples = list(samples)
    if not samples:
        raise CalibrationError("no calibration samples")
    wanted = set(layers) if layers is not None else None
    by_node = {n.name: n for n, role in linear_layers(graph) if role != "embedding"
               and (wanted is None or n.name in wanted)}
    shared: dict[str, InputStats] = {}
    per_layer: dict[str, InputStats] = {}
    for name, node in by_node.items():
        # K from the weight: the input's last dim can be a symbol shape inference invented
        per_layer[name] = shared.setdefault(node.inputs[0], InputStats(weight_k(graph, node)))
    rng = np.random.default_rng(seed)
    seen: set[str] = set()

    def observe(node, args):
        if node.name in by_node and node.inputs[0] not in seen:
            seen.add(node.inputs[0])
            per_layer[node.name].add(args[0], rng)

    for i, feeds in enumerate(samples):
        seen.clear()
        try:
            interpret.run(graph, feeds, observe=observe)
        except QCompileError as exc:
            raise CalibrationError(f"calibration sample {i} failed: {exc}") from None
        if progress:
            progress(i + 1, len(samples))
    return Calibration(per_layer, len(samples), max((s.rows for s in shared.values()), default=0))
