#!/usr/bin/env python3
"""qcompile's 4-bit weights next to onnxruntime's, on the same model, tokens and layout.

Every configuration is weight-only (the activations stay float: W4A16), so the table compares the
weight grids alone. The layout is the same for all: int4 in blocks of 128 where they divide K and
64 elsewhere, the embedding and the LM head left in float.

  qcompile rtn      qcompile.prepare with that plan (the grid `qcompile build` uses)
  onnxruntime rtn   MatMulNBitsQuantizer, symmetric, its default round-to-nearest
  onnxruntime hqq   MatMulNBitsQuantizer with HQQ (half-quadratic, asymmetric with float zero points)

onnxruntime's RTN file is imported by qcompile (MatMulNBits -> QLinear, exactly); HQQ's float zero
points have no qcompile kernel, so its weights are dequantized to float MatMuls (exactly the
weights onnxruntime computes with). One evaluator scores every row: the reference interpreter's perplexity over --windows windows of --window
tokens of each text (the Lee news corpus, as in docs/accuracy.md, and Python's pydoc topics).

  python tools/quant_compare.py --model smollm2_kv.onnx
  python tools/quant_compare.py --model smollm2_kv.onnx --only fp32 "qcompile rtn" --windows 1

Needs the torch extra (the tokenizer) and PyPI once (the Lee corpus); about 10 minutes for
SmolLM2 on 2 cores.
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

CONFIGS = ("fp32", "qcompile rtn", "onnxruntime rtn", "onnxruntime hqq")


def block_for(k: int) -> int:
    return 128 if k % 128 == 0 else 64


def middle_layers(model_path: Path) -> dict[str, int]:
    """The linear layers every row quantizes (not the embedding or LM head) -> their K."""
    graph = prepare(load(model_path), QuantOptions()).graph
    return {n.name: int(graph.values[n.inputs[1]].shape[0]) for n, role in linear_layers(graph) if role == "linear"}


def qcompile_rtn(model_path: Path, layers: dict[str, int]):
    formats = {name: f"int4-g{block_for(k)}" for name, k in layers.items()}
    return _float_activations(prepare(load(model_path), QuantOptions(formats=formats)).graph)


def onnxruntime_file(model_path: Path, layers: dict[str, int], hqq: bool, out: Path) -> Path:
    """Two passes of MatMulNBitsQuantizer (block 128 where it divides K, then 64 on the rest)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer
    model = onnx.load(str(model_path))
    every = [n.name for n in model.graph.node if n.op_type == "MatMul"]
    for block in (128, 64):
        chosen = [name for name, k in layers.items() if block_for(k) == block and name in every]
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
    layers = middle_layers(args.model)
    print(f"{len(layers)} layers at int4 (block 128 where it divides K, else 64); embedding and LM head float; "
          f"{args.windows} x {args.window} tokens per text", flush=True)
    logging.disable(logging.INFO)       # the quantizer's per-node progress
    rows = []
    with tempfile.TemporaryDirectory(prefix="qc_quant_compare_") as tmp:
        for config in args.only or CONFIGS:
            start = time.perf_counter()
            if config == "fp32":
                graph = prepare(load(args.model), QuantOptions()).graph
            elif config == "qcompile rtn":
                graph = qcompile_rtn(args.model, layers)
            elif config == "onnxruntime rtn":
                path = onnxruntime_file(args.model, layers, False, Path(tmp) / "rtn.onnx")
                graph = _float_activations(prepare(load(path), QuantOptions()).graph)
            else:     # HQQ's zero points are not integers: no qcompile kernel takes them, so its weights
                path = onnxruntime_file(args.model, layers, True, Path(tmp) / "hqq.onnx")   # are scored in float
                graph = prepare(load(dequantized(path, Path(tmp) / "hqq_float.onnx")), QuantOptions()).graph
            scores = evaluate(graph, texts, args.window, args.windows)
            rows.append((config, scores))
            print(f"{config:<16} " + "  ".join(f"{k} {v:7.3f}" for k, v in scores.items()) +
                  f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    print("\n| weights (W4A16, same layout) | " + " | ".join(f"{k} perplexity" for k in texts) + " |")
    print("|---" * (len(texts) + 1) + "|")
    for config, scores in rows:
        print(f"| {config} | " + " | ".join(f"{scores[k]:.2f}" for k in texts) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
