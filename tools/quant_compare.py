#!/usr/bin/env python3
"""qcompile's 4-bit weights next to onnxruntime's, on the same model, tokens and layout.

Every configuration is weight-only (the activations stay float: W4A16), so the table compares the
weight grids alone; the embedding and the LM head stay float. Unless named g64, int4 is in blocks of
128 where they divide K and 64 elsewhere. Bits per weight count the middle layers' codes and their
float32 scales (and HQQ's float32 zero points).

  qcompile int4 plain     qcompile.prepare with that plan, --no-self-calibration: the searched
                          16-level grid, every input weighed alike
  qcompile int4           the same with the build's default self-calibration (random token ids weigh
                          the search by each input's mean square)
  qcompile mixed          `--precision mixed` as built: int4 with self-calibration, its most harmful
                          layers raised to int8 within 4.5 bits per weight
  onnxruntime rtn [g64]   MatMulNBitsQuantizer, symmetric, its default round-to-nearest
  onnxruntime hqq [g64]   MatMulNBitsQuantizer with HQQ (half-quadratic, asymmetric with float zero points)

onnxruntime's RTN file is imported by qcompile (MatMulNBits -> QLinear, exactly); HQQ's float zero
points have no qcompile kernel, so its weights are dequantized to float MatMuls (exactly the
weights onnxruntime computes with). One evaluator scores every row: the reference interpreter's perplexity over --windows windows of --window
tokens of each text (the Lee news corpus, as in docs/accuracy.md, and Python's pydoc topics).

  python tools/quant_compare.py --model smollm2_kv.onnx
  python tools/quant_compare.py --model smollm2_kv.onnx --only fp32 "qcompile int4" --windows 1

Needs the torch extra (the tokenizer) and PyPI once (the Lee corpus); about 10 minutes for
SmolLM2 on 2 cores (all eight rows).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qcompile.api import load  # noqa: E402
from qcompile.evaluate import perplexity  # noqa: E402
from qcompile.passes.assign_precision import linear_layers  # noqa: E402
from qcompile.prepare import QuantOptions, prepare  # noqa: E402

CONFIGS = ("fp32", "qcompile int4 plain", "qcompile int4", "qcompile mixed", "onnxruntime rtn", "onnxruntime hqq",
           "onnxruntime rtn g64", "onnxruntime hqq g64")


def block_for(k: int, largest: int = 128) -> int:
    return largest if k % largest == 0 else 64


def middle_layers(model_path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The linear layers every row quantizes (not the embedding or LM head) -> their K, and their sizes."""
    graph = prepare(load(model_path), QuantOptions()).graph
    linear = [n for n, role in linear_layers(graph) if role == "linear"]
    return ({n.name: int(graph.values[n.inputs[1]].shape[0]) for n in linear},
            {n.name: int(np.prod(graph.values[n.inputs[1]].shape)) for n in linear})


def qcompile_graph(model_path: Path, layers: dict[str, int], config: str, accuracy):
    """(graph with float activations, middle bits per weight)."""
    if config == "qcompile mixed":
        prepared = prepare(load(model_path), QuantOptions(precision="mixed"))
    else:
        formats = {name: f"int4-g{block_for(k)}" for name, k in layers.items()}
        prepared = prepare(load(model_path), QuantOptions(formats=formats, self_calibration=config == "qcompile int4"))
    return _float_activations(prepared.graph), accuracy.bits_per_weight(prepared)[0]


def onnxruntime_bits(layers: dict[str, int], params: dict[str, int], hqq: bool, largest: int) -> float:
    per = {name: 4 + (64 if hqq else 32) / block_for(k, largest) for name, k in layers.items()}
    return sum(per[n] * params[n] for n in layers) / sum(params[n] for n in layers)


def onnxruntime_file(model_path: Path, layers: dict[str, int], hqq: bool, out: Path, largest: int = 128) -> Path:
    """Passes of MatMulNBitsQuantizer (block `largest` where it divides K, then 64 on the rest)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer
    model = onnx.load(str(model_path))
    every = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    for block in dict.fromkeys((largest, 64)):
        chosen = [name for name, k in layers.items() if block_for(k, largest) == block and name in every]
        if not chosen:
            continue
        config = HQQWeightOnlyQuantConfig(block_size=block, bits=4) if hqq else None
        quantizer = MatMulNBitsQuantizer(model, block_size=block, is_symmetric=True, algo_config=config,
                                         nodes_to_exclude=[n for n in every if n not in chosen])
        quantizer.process()
        model = quantizer.model.model
    onnx.save(model, str(out), save_as_external_data=True, location=out.name + ".data")
    return out


def dequantized(path: Path, out: Path) -> Path:
    """Every MatMulNBits of a file as MatMul by the float weight it stands for (bit for bit what
    onnxruntime and the reference interpreter compute from it), bias as an Add."""
    from onnx import helper, numpy_helper

    from qcompile.ir.interpret.quant import matmul_nbits_weight
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for n in model.graph.node:
        if n.op_type != "MatMulNBits":
            nodes.append(n)
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        arr = [numpy_helper.to_array(inits[x]) if x in inits else None for x in list(n.input) + [""] * (6 - len(n.input))]
        w = matmul_nbits_weight(arr[1], arr[2], arr[3], a["N"], a["K"], a.get("bits", 4), a["block_size"])
        name = f"{n.name}.float_weight"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T.astype(np.float32)), name))
        out_name = n.output[0] + ".nobias" if arr[5] is not None else n.output[0]
        nodes.append(helper.make_node("MatMul", [n.input[0], name], [out_name], name=n.name))
        if arr[5] is not None:
            nodes.append(helper.make_node("Add", [out_name, n.input[5]], [n.output[0]], name=n.name + "/bias"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out), save_as_external_data=True, location=out.name + ".data")
    return out


def _float_activations(graph):
    for n in graph.nodes:
        if n.op == "QLinear":
            n.attrs["activations"] = "fp32"
    return graph


def evaluate(graph, texts: dict[str, np.ndarray], window: int, windows: int) -> dict[str, float]:
    return {name: perplexity(graph, ids[:window * windows], window)[0] for name, ids in texts.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="the fp32 ONNX language model (e.g. SmolLM2's export)")
    ap.add_argument("--window", type=int, default=1024, help="tokens per window (default: %(default)s)")
    ap.add_argument("--windows", type=int, default=2, help="windows per text (default: %(default)s)")
    ap.add_argument("--only", nargs="+", choices=CONFIGS, help="a subset of the rows")
    args = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("accuracy", ROOT / "tools" / "accuracy.py")
    accuracy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accuracy)
    texts = {"lee": accuracy.cached_tokens("lee_background", accuracy.lee_text),
             "pydoc": accuracy.cached_tokens("pydoc", accuracy.pydoc_text)}
    layers, params = middle_layers(args.model)
    print(f"{len(layers)} middle layers; embedding and LM head float; {args.windows} x {args.window} tokens per "
          "text", flush=True)
    logging.disable(logging.INFO)       # the quantizer's per-node progress
    rows = []
    with tempfile.TemporaryDirectory(prefix="qc_quant_compare_") as tmp:
        for config in args.only or CONFIGS:
            start = time.perf_counter()
            largest = 64 if config.endswith("g64") else 128
            hqq = "hqq" in config
            if config == "fp32":
                graph, bits = prepare(load(args.model), QuantOptions()).graph, 32.0
            elif config.startswith("qcompile"):
                graph, bits = qcompile_graph(args.model, layers, config, accuracy)
            elif not hqq:
                path = onnxruntime_file(args.model, layers, False, Path(tmp) / "rtn.onnx", largest)
                graph = _float_activations(prepare(load(path), QuantOptions()).graph)
            else:     # HQQ's zero points are not integers: no qcompile kernel takes them, so its weights
                path = onnxruntime_file(args.model, layers, True, Path(tmp) / "hqq.onnx", largest)  # are scored in float
                graph = prepare(load(dequantized(path, Path(tmp) / "hqq_float.onnx")), QuantOptions()).graph
            if config.startswith("onnxruntime"):
                bits = onnxruntime_bits(layers, params, hqq, largest)
            scores = evaluate(graph, texts, args.window, args.windows)
            rows.append((config, bits, scores))
            print(f"{config:<20} {bits:5.2f} bits  " + "  ".join(f"{k} {v:7.3f}" for k, v in scores.items()) +
                  f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    print("\n| weights (W4A16) | bits per weight (middle) | " + " | ".join(f"{k} perplexity" for k in texts) + " |")
    print("|---" * (len(texts) + 2) + "|")
    for config, bits, scores in rows:
        print(f"| {config} | {bits:.2f} | " + " | ".join(f"{scores[k]:.2f}" for k in texts) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
