"""Accuracy measurement on the reference interpreter: perplexity of language models and
per-layer comparison of a quantized graph against its float twin."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .calibration import lm_feeds
from .ir import interpret
from .ir.graph import Graph


def _logits_name(graph: Graph) -> str:
    from .artifact.decoder import NotADecoder, detect
    try:
        return detect(graph).logits
    except NotADecoder:
        return graph.outputs[0]


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each target under logits [T, V] (float64, stable log-softmax)."""
    z = logits.astype(np.float64)
    z -= z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))
    return log_norm - z[np.arange(len(targets)), targets]


def mean_kl(reference: np.ndarray, got: np.ndarray) -> float:
    """Mean KL(p_ref || p_got) of the next-token distributions of logits [..., V]: unlike a relative
    error of the logits, blind to the offsets softmax ignores."""
    def log_softmax(z):
        z = z.astype(np.float64).reshape(-1, z.shape[-1])
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    lr, lg = log_softmax(reference), log_softmax(got)
    return float((np.exp(lr) * (lr - lg)).sum(axis=-1).mean())


def perplexity(graph: Graph, ids: np.ndarray, window: int = 1024,
               progress: Callable[[int, int], None] | None = None,
               run: Callable[[dict], dict] | None = None) -> tuple[float, int]:
    """(perplexity, tokens scored) over non-overlapping windows, each run from an empty cache:
    every token but a window's first is predicted from the ones before it in its window.

    The graph is run by the reference interpreter, or by `run` (feeds -> outputs; e.g. a built
    library, `qcompile.load(lib)`), with the graph then only naming the inputs."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    name = _logits_name(graph)
    run = run or (lambda feeds: interpret.run(graph, feeds, outputs=[name]))
    starts = range(0, ids.size - 1, window)
    total, count = 0.0, 0
    for i, s in enumerate(starts, 1):
        chunk = ids[s:s + window]
        if chunk.size < 2:
            continue
        logits = run(lm_feeds(graph, chunk))[name].reshape(chunk.size, -1)
        nll = token_nll(logits[:-1], chunk[1:])
        total, count = total + float(nll.sum()), count + nll.size
        if progress:
            progress(i, len(starts))
    return float(np.exp(total / count)), count


@dataclass
class LayerComparison:
    name: str
    format: str
    snr_db: float       # 10 log10(signal power / error power); inf when equal
    cosine: float
    max_error: float

    def row(self) -> str:
        snr = "inf" if np.isinf(self.snr_db) else f"{self.snr_db:6.1f}"
        return f"{self.name}  {self.format:<14} {snr:>6}  {self.cosine:9.6f}  {self.max_error:10.4g}"


def compare_arrays(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float]:
    """(SNR dB, cosine, max |error|) of got against ref."""
    r, g = ref.astype(np.float64).reshape(-1), got.astype(np.float64).reshape(-1)
    err = g - r
    noise, signal = float(err @ err), float(r @ r)
    snr = np.inf if noise == 0 else (10 * np.log10(signal / noise) if signal else -np.inf)
    denom = np.linalg.norm(r) * np.linalg.norm(g)
    cos = float(r @ g / denom) if denom else (1.0 if noise == 0 else 0.0)
    return float(snr), cos, float(np.abs(err).max()) if err.size else 0.0


def compare_layers(reference: Graph, quantized: Graph, feeds: dict, formats: dict[str, str]) -> list[LayerComparison]:
    """Each linear layer's output in `quantized` against the same node's in `reference` (the graph
    before quantization: same node names), plus the graph outputs; errors accumulate downstream."""
    ref = interpret.run(reference, feeds, keep_all=True)
    got = interpret.run(quantized, feeds, keep_all=True)
    rows = []
    for node in quantized.nodes:
        if node.name in formats and node.outputs[0] in ref:
            rows.append(LayerComparison(node.name, formats[node.name],
                                        *compare_arrays(ref[node.outputs[0]], got[node.outputs[0]])))
    for out in quantized.outputs:
        rows.append(LayerComparison(f"output {out}", "", *compare_arrays(ref[out], got[out])))
    return rows
