"""The target-neutral half of a build: passes, accuracy passes, calibration and quantization.

`qcompile build` lowers the graph this returns; `qcompile inspect --compare` and the accuracy
benchmark run the very same graph in the reference interpreter, so what they measure is what
gets compiled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import QCompileError
from .ir.graph import Graph
from .passes import run_pipeline

Say = Callable[[str, str], None]   # (phase, detail)


@dataclass
class QuantOptions:
    precision: str = "fp32"          # a policy: fp32 bf16 int8 int4 ternary mixed auto
    middle: str = "int4"
    group_size: int | None = None    # None: 128 where it divides K, else 64 or 32
    plan: Path | None = None         # per-layer overrides (TOML/JSON)
    rotate: bool = False             # fold norms and Hadamard-rotate the residual stream before quantizing
    calibrate: Path | None = None    # .npz of inputs or token ids (.npy/.txt)
    calib_seq: int = 512             # tokens per calibration window
    calib_samples: int = 16          # calibration windows (or .npz samples) used
    rounding: str = "rtn"            # rtn or gptq (needs calibration)
    budget: float | None = None      # auto: allowed relative output error (noise / signal power)
    bits: float = 4.5                # mixed: mean storage bits per weight of the middle layers (int4 layers
                                     # raised to int8 where the output error gains most, within this)
    activations: str = "int8"        # int8 (per token, at run time), int8-static (calibrated per-layer
                                     # ranges) or fp32 (weight-only; reference interpreter only)
    act_clip: str = "percentile"     # int8-static: how a range is chosen (percentile, mse or max)
    file_activations: bool = True    # imported QDQ layers read the file's int8 activations (scale, zero point)
    self_calibration: bool = True    # without --calibrate, int4 layers weigh their scale search by the
                                     # activations of random token ids (qcompile.self_calibration)
    formats: dict[str, str] | None = None   # exact node name -> format (a built library's plan.json)
    dump_ir: Path | None = None


@dataclass
class Prepared:
    graph: Graph
    layers: list = field(default_factory=list)          # (node, role, format, why) rows
    params: dict = field(default_factory=dict)          # node -> weight count of each linear layer
    calibration: object | None = None                   # calibration.Calibration
    sensitivity: dict | None = None                     # node -> {format: relative output error}
    notes: list[str] = field(default_factory=list)
    self_calibration: dict | None = None                # what self_calibration.describe() recorded, if it ran
    mixed: dict | None = None                           # mixed's budget, bits reached and layers raised
    quantized: dict = field(default_factory=dict, repr=False)   # (node, format) -> QuantizedWeight made early


def check_options(q: QuantOptions) -> None:
    """Option combinations that cannot work fail here, before any work."""
    if q.rounding not in ("rtn", "gptq"):
        raise QCompileError(f"--rounding must be rtn or gptq, got '{q.rounding}'", phase="options")
    if q.rounding == "gptq" and q.calibrate is None:
        raise QCompileError("--rounding gptq needs calibration data (--calibrate FILE)", phase="options")
    if q.precision == "auto" and q.formats is None and (q.calibrate is None or q.budget is None):
        raise QCompileError("--precision auto needs --calibrate FILE and --budget X (the allowed relative "
                            "output error, e.g. 0.02)", phase="options")
    if q.budget is not None and (q.precision != "auto" or not q.budget > 0):
        raise QCompileError("--budget is a positive error bound for --precision auto", phase="options")
    if q.activations not in ("int8", "int8-static", "fp32"):
        raise QCompileError(f"activations must be int8, int8-static or fp32, got '{q.activations}'", phase="options")
    if q.activations == "int8-static" and q.calibrate is None:
        raise QCompileError("static activation scales (--activations static) need calibration data "
                            "(--calibrate FILE)", phase="options")
    if q.act_clip not in ("percentile", "mse", "max"):
        raise QCompileError(f"--act-clip must be percentile, mse or max, got '{q.act_clip}'", phase="options")
    if q.calibrate is not None and not Path(q.calibrate).exists():
        raise QCompileError(f"calibration file '{q.calibrate}' does not exist", phase="options")


def prepare(graph: Graph, q: QuantOptions, say: Say | None = None) -> Prepared:
    """Run the default pipeline, the accuracy passes and quantization on an imported graph."""
    from .passes import get_pass
    from .passes.assign_precision import PrecisionConfig, assign, linear_layers, load_plan, table
    from .passes.file_activations import file_activation_layers, use_file_activations
    from .passes.import_quantized import import_report
    from .passes.quantize_weights import quantize_weights
    check_options(q)
    say = say or (lambda phase, detail: None)
    policy = "mixed" if q.precision == "auto" else q.precision
    precision = PrecisionConfig(policy, q.middle, q.group_size, load_plan(q.plan) if q.plan else {})
    say("passes", "default pipeline")
    graph, _report = run_pipeline(graph, "default", dump_ir=q.dump_ir)
    out = Prepared(graph)
    imported = import_report(graph)
    if imported:
        exact = sum(e["exact"] for e in imported)
        say("passes", f"{len(imported)} pre-quantized layers imported ({exact} exactly):\n" +
            "\n".join(f"  {e['node']}: {e['op']} -> {e['format']}" + ("" if e["exact"] else f" ({e['note']})")
                      for e in imported))
    unrotated = graph.copy() if q.rotate and q.rounding == "rtn" else None
    if q.rotate:
        graph = out.graph = get_pass("rotate").fn(get_pass("fold_norms").fn(graph))
        say("passes", "norm gammas folded into the linear layers; residual stream rotated by H/sqrt(d)")
    recorded = file_activation_layers(graph)
    if recorded and q.file_activations and not q.rotate:
        use_file_activations(graph)
        say("passes", f"{len(recorded)} imported layers compute on the file's static int8 activations (its "
                      "scales and zero points, as onnxruntime does)")
    elif recorded:
        why = "the residual stream is rotated (--rotate)" if q.rotate else "--activations dynamic"
        say("passes", f"note: {len(recorded)} imported layers have static int8 activation scales in the file; "
                      f"they quantize per token at run time instead ({why}), which differs from onnxruntime "
                      "running the same file")
    samples = None
    if q.calibrate is not None:
        from .calibration import collect, load_samples
        samples = load_samples(q.calibrate, graph, q.calib_seq, q.calib_samples)
        out.calibration = collect(graph, samples,
                                  progress=lambda i, n: say("calibrate", f"sample {i}/{n} through the reference"))
        say("calibrate", f"{out.calibration.samples} samples, {out.calibration.rows} rows per layer input")
        widest = max((s.k for s in out.calibration.layers.values()), default=0)
        if q.rounding == "gptq" and out.calibration.rows < 4 * widest:
            say("calibrate", f"warning: {out.calibration.rows} calibration rows for layers with up to {widest} "
                             "inputs; GPTQ fits so few rows too closely (fewer than 4x the inputs) and can end "
                             "up worse than rtn on other data: give more (--calib-samples, a longer file)")
    act_ranges = None
    if q.activations == "int8-static":
        act_ranges = {name: stats.static_range(q.act_clip) for name, stats in out.calibration.layers.items()}
        say("calibrate", f"static activation ranges ({q.act_clip}) for {len(act_ranges)} layers")
    if q.formats is not None:
        precision.chosen = dict(q.formats)
    elif q.precision == "auto":
        from .sensitivity import choose, measure
        candidates = ("ternary", f"int4-g{q.group_size or 128}", "int8", "bf16")
        out.sensitivity = measure(graph, _short(graph, samples[0]), candidates, q.activations, act_ranges,
                                  calibration=out.calibration,
                                  progress=lambda i, n: say("calibrate", f"sensitivity: layer {i}/{n}"))
        precision.chosen = choose(graph, out.sensitivity, q.budget)
        say("precision", f"auto: {len(precision.chosen)} layers chosen within budget {q.budget:g}")
    out.params = {n.name: int(np.prod(graph.values[n.inputs[0 if role == "embedding" else 1]].shape))
                  for n, role in linear_layers(graph)}
    out.layers = assign(graph, precision, out.sensitivity)
    if out.calibration is None and q.self_calibration and any(fmt.startswith("int4") for _, _, fmt, _ in out.layers):
        samples = _self_calibrate(graph, out, say)
    if q.precision == "mixed" and q.formats is None and q.middle == "int4" and samples:
        choose_mixed(graph, q, precision, out, samples, say)
        out.layers = assign(graph, precision, out.sensitivity)
    report = quantize_weights(graph, rounding=q.rounding, calibration=out.calibration, activations=q.activations,
                              act_ranges=act_ranges, cache=out.quantized)
    out.quantized = {}
    out.notes += [f"{node}: {what}" for node, what in report if "gptq" in what]
    say("precision", f"policy {q.precision}: {len(out.layers)} layers\n" + table(out.layers))
    if unrotated is not None and any(fmt.startswith(("int", "ternary")) for _, _, fmt, _ in out.layers):
        _check_rotation_helps(unrotated, out, q, samples, say)
    return out


ROTATION_CHECK_TOKENS = 64


def _check_rotation_helps(unrotated: Graph, out: Prepared, q: QuantOptions, samples, say: Say) -> None:
    """--rotate with round-to-nearest is kept only where it lowers the quantized model's output error.

    Rotation spreads every channel over all of them. On models with massive-activation channels
    (SmolLM2: a channel 230x the median, its RMSNorm gamma ~1e-4) folding the gammas makes those
    weight rows ~0 while their activations stay huge, and the rotation then multiplies every row's
    rounding noise by them; only GPTQ's error feedback, which sees the activations, undoes that.
    So the same options are prepared without --rotate and both are compared with fp32 on one short
    sample; a rotation that loses is refused with the two numbers, not applied silently. On SmolLM2
    (int4, 64 random token ids) the KL divergence is 1.69 rotated against 0.70 without, as its
    perplexity says (Lee 40.30 against 32.37); the logits' relative error ranks them the other way
    on real text, so language models are judged by KL."""
    import dataclasses

    from . import self_calibration
    from .ir import interpret
    from .sensitivity import judge
    feeds = samples[0] if samples else (self_calibration.samples(unrotated, ROTATION_CHECK_TOKENS,
                                                                  ROTATION_CHECK_TOKENS) or [None])[0]
    if feeds is None:
        say("passes", "note: --rotate is applied unchecked: this model takes no token ids and no --calibrate "
                      "file was given, so its effect on the quantized outputs cannot be measured")
        return
    feeds = _short(unrotated, feeds, ROTATION_CHECK_TOKENS)
    say("passes", "--rotate with rtn rounding: measuring the quantized outputs with and without the rotation")
    error, names, what = judge(unrotated)
    reference = interpret.run(unrotated, feeds, outputs=names)
    plain = prepare(unrotated, dataclasses.replace(q, rotate=False, dump_ir=None)).graph
    err_plain, err_rot = (error(reference, interpret.run(g, feeds, outputs=names)) for g in (plain, out.graph))
    if err_rot > err_plain:
        raise QCompileError(f"--rotate makes this model's quantized outputs worse: {what} {err_rot:.3g} rotated "
                            f"against {err_plain:.3g} without it ({ROTATION_CHECK_TOKENS} tokens). Its norms' gammas, "
                            "folded into the weights for the rotation, leave channels with massive activations on "
                            "near-zero weight rows, and the rotation spreads them over every input, so "
                            "round-to-nearest loses more", phase="precision",
                            hint="drop --rotate, or use it with GPTQ, which weighs the rounding by the "
                                 "activations: --calibrate FILE --rounding gptq")
    say("passes", f"--rotate kept: {what} {err_rot:.3g} rotated against {err_plain:.3g} without it")


def _self_calibrate(graph: Graph, out: Prepared, say: Say) -> list[dict] | None:
    """Activation statistics from random token ids, for the int4 scale search (see self_calibration);
    returns the samples (None for a model without token inputs)."""
    from . import self_calibration
    from .calibration import collect
    feeds = self_calibration.samples(graph)
    if feeds is None:
        say("calibrate", "no token input: the int4 scale search weighs every input alike (give --calibrate "
                         "to weigh them by real activations)")
        return None
    out.calibration = collect(graph, feeds, progress=lambda i, n: say("calibrate", f"self-calibration: sample "
                                                                                   f"{i}/{n} through the reference"))
    out.self_calibration = self_calibration.describe()
    say("calibrate", f"self-calibration: {out.calibration.rows} rows of random token ids weigh the int4 scale "
                     "search (no --calibrate file given)")
    return feeds


def choose_mixed(graph: Graph, q: QuantOptions, precision, out: Prepared, samples: list[dict], say: Say) -> None:
    """`--precision mixed` as a quality promise: measure what every int4 layer's weights alone do to
    the output (one trial per layer on MIXED_TOKENS tokens of the first calibration sample, the
    layer's activations left float so that only its weights' error counts; a decoder's error is
    the KL divergence of its next-token distributions, which on SmolLM2 picks layers that score
    33.16 on the first Lee window where the logits' relative error picks 33.42) and raise the most
    harmful layers to int8 while the middle layers stay within q.bits per weight. int8 weights add
    about 1/256 of int4's noise power, so raising a layer removes about all of its measured error.
    The reasons go into the layer table and the plan file."""
    from .sensitivity import choose_within_bits, measure, storage_bits
    low = {name: fmt for name, role, fmt, why in out.layers if fmt.startswith("int4") and why.startswith("policy")}
    if not low:
        return
    total = sum(out.params[n] for n in low)
    base = sum(storage_bits(f) * out.params[n] for n, f in low.items()) / total
    cheapest = min((storage_bits("int8") - storage_bits(f)) * out.params[n] for n, f in low.items()) / total
    if base + cheapest > q.bits + 1e-9:        # not even one layer fits: nothing to measure
        out.mixed = {"bits_budget": q.bits, "bits": round(base, 3), "int8_layers": []}
        say("precision", f"mixed: the int4 layers take {base:.2f} bits per weight; --bits {q.bits:g} leaves no room "
                         "to raise any to int8")
        return
    feeds = _short(graph, samples[0], MIXED_TOKENS)
    errors = measure(graph, feeds, {name: (fmt,) for name, fmt in low.items()}, "fp32",
                     progress=lambda i, n: say("precision", f"mixed: sensitivity of layer {i}/{n}"),
                     calibration=out.calibration, cache=out.quantized, metric=None)
    sens = {name: {low[name]: errs.get(low[name], 0.0), "int8": 0.0} for name, errs in errors.items()}
    pick, bits = choose_within_bits(graph, sens, low, "int8", q.bits)
    ranked = sorted(low, key=lambda n: -sens[n][low[n]])
    rank = {n: i for i, n in enumerate(ranked, 1)}
    for name, fmt in pick.items():
        precision.chosen[name] = fmt
        precision.reasons[name] = (f"mixed: its int4 weights cost {sens[name][low[name]]:.1e} of the output (rank "
                                   f"{rank[name]} of {len(low)}), " + ("raised to int8" if fmt != low[name] else "kept"))
    raised = [n for n in ranked if pick[n] != low[n]]
    out.sensitivity = sens
    out.mixed = {"bits_budget": q.bits, "bits": round(bits, 3), "int8_layers": raised}
    say("precision", f"mixed: {len(raised)} of {len(low)} int4 layers raised to int8 (those whose int4 weights "
                     f"cost the output most per added bit); middle layers at {bits:.2f} bits per weight "
                     f"within --bits {q.bits:g}")


MIXED_TOKENS = 64
SENSITIVITY_TOKENS = 128


def _short(graph: Graph, feeds: dict, count: int = SENSITIVITY_TOKENS) -> dict:
    """A language model's calibration window cut to `count` tokens for the sensitivity trials
    (one trial per layer and format: their cost grows with the tokens, their ranking hardly does)."""
    from .calibration import CalibrationError, lm_feeds
    tokens = next((v for k, v in feeds.items() if graph.values[k].dtype.name == "int64" and v.ndim == 2), None)
    if tokens is None or tokens.shape[1] <= count:
        return feeds
    try:
        if len(feeds) == len(lm_feeds(graph, tokens)):
            return lm_feeds(graph, tokens[0, :count])
    except CalibrationError:            # an encoder (ids, mask, types): all [1, seq], cut alike
        if all(v.ndim == 2 and v.shape == tokens.shape for v in feeds.values()):
            return {k: v[:, :count] for k, v in feeds.items()}
    return feeds
