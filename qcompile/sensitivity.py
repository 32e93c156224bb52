"""Per-layer sensitivity and the `--precision auto` choice.

Sensitivity of a layer to a format: the model's output error when only that layer is quantized
to it (weights rounded, activations int8 per token as the kernels do), as noise power over signal
power of the outputs, on one calibration sample. The reference run is kept, and each trial
re-executes only the nodes from the layer on, so the cost is about half a forward pass per
(layer, format).

The choice treats the errors of different layers as additive (they are small and roughly
independent) and spends bytes where they buy the most error: every layer starts at the cheapest
format, then the upgrade with the largest error reduction per added byte is taken until the sum
is within the budget. The final plan's real error is measured afterwards, not assumed.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .errors import QCompileError
from .evaluate import mean_kl
from .ir import interpret
from .ir.graph import Graph
from .passes.assign_precision import fit_group, linear_layers, weight_k
from .quant import quantize
from .quant.activations import quantize_per_token

BITS = {"ternary": 2, "int8": 8, "bf16": 16}   # storage bits per weight (int4: 4 + scale bits per group)


def storage_bits(fmt: str) -> float:
    if fmt.startswith("int4"):
        return 4 + 32 / int(fmt.split("-g")[1].split("-")[0])
    return BITS[fmt]


def _outputs(graph: Graph) -> list[str]:
    """What the error is measured on: a decoder's logits, else every float output."""
    from .artifact.decoder import NotADecoder, detect
    try:
        return [detect(graph).logits]
    except NotADecoder:
        return [o for o in graph.outputs if graph.values[o].dtype.name.startswith("fp")]


def relative_error(ref: dict, got: dict, names: list[str]) -> float:
    noise = sum(float(np.sum((got[n].astype(np.float64) - ref[n]) ** 2)) for n in names)
    signal = sum(float(np.sum(ref[n].astype(np.float64) ** 2)) for n in names)
    return noise / signal if signal else (0.0 if noise == 0 else np.inf)


def judge(graph: Graph, metric: str | None = None) -> tuple[Callable[[dict, dict], float], list[str], str]:
    """How a quantized run's outputs are scored against the reference's: (error(reference, got),
    the outputs it reads, what it measures). metric "relative": noise over signal power of the
    outputs; "kl": a decoder's mean KL divergence of its next-token distributions, blind to the
    logit offsets softmax ignores (which dominate the logits' relative error); None: "kl" for a
    decoder, else "relative"."""
    from .artifact.decoder import NotADecoder, detect
    names = _outputs(graph)
    if metric is None:
        try:
            detect(graph)
            metric = "kl"
        except NotADecoder:
            metric = "relative"
    if metric == "kl":
        return ((lambda ref, got: mean_kl(ref[names[0]], got[names[0]])), names,
                "mean KL divergence of the next-token distributions from fp32")
    return (lambda ref, got: relative_error(ref, got, names)), names, "relative output error (noise/signal power)"


def _weight(graph: Graph, node) -> np.ndarray:
    w = np.asarray(graph.values[node.inputs[1]].const, np.float32)
    return w.T if node.op == "Gemm" and node.attrs.get("transB") else w


def measure(graph: Graph, feeds: dict, candidates: tuple[str, ...] | dict[str, tuple[str, ...]], activations: str = "int8",
            act_ranges: dict[str, float] | None = None, progress: Callable[[int, int], None] | None = None,
            calibration=None, cache: dict | None = None, metric: str | None = "relative") -> dict[str, dict[str, float]]:
    """{layer: {format: the output error (judge()) with only that layer in that format}}, each layer
    quantized as the build will quantize it (int4 scales searched with the calibration's weights).
    `candidates` is one tuple of formats for every layer, or a tuple per layer name (only those
    layers are measured). `cache` keeps each (layer, format)'s QuantizedWeight for quantize_weights.
    `metric` is judge()'s."""
    error = judge(graph, metric)[0]
    env = interpret.run(graph, feeds, keep_all=True)
    index = {n.name: i for i, n in enumerate(graph.nodes)}
    per_layer = candidates if isinstance(candidates, dict) else None
    layers = [n for n, role in linear_layers(graph) if role != "embedding" and (per_layer is None or n.name in per_layer)]
    result: dict[str, dict[str, float]] = {}
    for done, node in enumerate(layers, 1):
        w = _weight(graph, node)
        x = env[node.inputs[0]]
        errors = {}
        mine = per_layer[node.name] if per_layer is not None else candidates
        for fmt in dict.fromkeys(fit_group(c, weight_k(graph, node)) for c in mine):
            stats = calibration[node.name] if calibration is not None and node.name in calibration else None
            try:
                qw = quantize(w, fmt, stats.mean_square() if stats else None)
            except ValueError:
                continue                       # no group size of this format fits K
            if cache is not None and node.op == "MatMul":
                cache[node.name, fmt] = qw
            wq = qw.dequantize().astype(np.float64)
            if fmt != "bf16" and activations in ("int8", "int8-static"):
                amax = act_ranges[node.name] if activations == "int8-static" else None
                xq, scale = quantize_per_token(x, amax)
                y = (xq.astype(np.float64) @ wq) * scale
            else:
                y = x.astype(np.float64) @ wq
            if node.op == "Gemm":           # alpha * A B + beta * C, as the layer computes it
                y = y * node.attrs.get("alpha", 1.0)
                if node.input(2):
                    y = y + env[node.inputs[2]] * node.attrs.get("beta", 1.0)
            errors[fmt] = error(env, _rerun(graph, env, index[node.name], y.astype(np.float32)))
        result[node.name] = errors
        if progress:
            progress(done, len(layers))
    return result


def _rerun(graph: Graph, env: dict, start: int, first_output: np.ndarray) -> dict:
    """The environment after replacing node `start`'s output and executing every later node."""
    trial = dict(env)
    trial[graph.nodes[start].outputs[0]] = first_output
    for n in graph.nodes[start + 1:]:
        results = interpret.run_node(n, [trial[x] if x else None for x in n.inputs])
        trial.update((name, arr) for name, arr in zip(n.outputs, results) if name)
    return trial


def choose(graph: Graph, sensitivity: dict[str, dict[str, float]], budget: float) -> dict[str, str]:
    """The cheapest format per layer whose summed errors stay within `budget`."""
    params = {n.name: int(np.prod(graph.values[n.inputs[1]].shape)) for n, role in linear_layers(graph)
              if role != "embedding"}
    options = {name: sorted(errs, key=storage_bits) for name, errs in sensitivity.items() if errs}
    pick = {name: fmts[0] for name, fmts in options.items()}
    total = sum(sensitivity[n][f] for n, f in pick.items())
    while total > budget:
        best = None
        for name, fmts in options.items():
            cur = pick[name]
            for fmt in fmts[fmts.index(cur) + 1:]:
                gain = sensitivity[name][cur] - sensitivity[name][fmt]
                cost = (storage_bits(fmt) - storage_bits(cur)) * params[name]
                if gain > 0 and (best is None or gain / cost > best[0]):
                    best = (gain / cost, name, fmt)
        if best is None:
            raise QCompileError(f"no choice of formats meets the error budget {budget:g}: the most precise "
                                f"gives {total:.3g}", phase="precision",
                                hint="raise --budget, or check the calibration data")
        _, name, fmt = best
        total += sensitivity[name][fmt] - sensitivity[name][pick[name]]
        pick[name] = fmt
    return pick


def choose_within_bits(graph: Graph, sensitivity: dict[str, dict[str, float]], low: dict[str, str], high: str,
                       bits: float) -> tuple[dict[str, str], float]:
    """`--precision mixed`: every middle layer starts at its `low` format; the layers whose upgrade to
    `high` removes the most output error per added bit are upgraded while the middle layers' mean
    storage bits per weight stays within `bits`. Returns (layer -> format, the mean bits reached)."""
    params = {n.name: int(np.prod(graph.values[n.inputs[1]].shape)) for n, role in linear_layers(graph)
              if n.name in low}
    total = sum(params.values())
    spent = sum(storage_bits(low[n]) * params[n] for n in low)
    pick = dict(low)
    gains = []
    for name, fmt in low.items():
        errs = sensitivity.get(name, {})
        if fmt in errs and high in errs and errs[fmt] > errs[high]:
            cost = (storage_bits(high) - storage_bits(fmt)) * params[name]
            gains.append(((errs[fmt] - errs[high]) / cost, name, cost))
    for _, name, cost in sorted(gains, reverse=True):
        if (spent + cost) / total <= bits + 1e-9:
            pick[name] = high
            spent += cost
    return pick, spent / total if total else 0.0
