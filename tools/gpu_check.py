#!/usr/bin/env python3
"""CUDA artifacts on a real GPU: built here, run there (tools/gpu_check.sh drives both halves).

  python tools/gpu_check.py prepare DIR [--arch cuda-sm90]   build the artifacts and their reference
                                                             outputs (onnxruntime) into DIR
  python tools/gpu_check.py run DIR [--json FILE]            on the GPU machine: run each artifact,
                                                             compare, time decode; needs only numpy,
                                                             ml_dtypes and the NVIDIA driver

Cases: the MLP, the Llama-style decoder with KV cache (prompt and one decode step) and the
BERT-style encoder, fp32, against onnxruntime; then a bench decoder (hidden 2048) whose decode
step is timed whole and per kernel, reported in GB/s of weight bytes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAST, PROMPT = 5, 7
PRECISION = {"llama_bf16": "bf16", "llama_int8": "int8", "llama_int4": "int4"}
# bf16 weights against fp32 onnxruntime: a looser bound; int8/int4 against the reference interpreter
# on the same quantized graph (float32 sums against float64: a rare int8 rounding step downstream)
TOLERANCE = {"llama_bf16": 3e-2, "llama_int8": 1e-3, "llama_int4": 1e-3}
BENCH_PRECISIONS = ("fp32", "bf16", "int8", "int4")
BENCH = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=2, num_heads=16,
             num_kv_heads=4, tie_embeddings=False, max_position=512)


def _feeds(name: str, model, rng) -> list[dict[str, np.ndarray]]:
    if name == "mlp":
        return [{"x": rng.standard_normal((1, 64)).astype(np.float32)}]     # batch-like dims are bound to 1
    if name.startswith("bert"):
        ids = rng.integers(0, 100, (1, 9)).astype(np.int64)
        return [{"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}]
    kv = [i.name for i in model.graph.input if i.name.startswith("past_")]
    shape = [d.dim_value for d in model.graph.input[1].type.tensor_type.shape.dim]
    prompt = {"input_ids": rng.integers(0, 200, (1, PROMPT)).astype(np.int64),
              **{k: np.zeros((1, shape[1], 0, shape[3]), np.float32) for k in kv}}
    step = {"input_ids": rng.integers(0, 200, (1, 1)).astype(np.int64),
            **{k: (0.5 * rng.standard_normal((1, shape[1], PAST, shape[3]))).astype(np.float32) for k in kv}}
    return [prompt, step]


def _reference(path: Path, precision: str):
    """Expected outputs: onnxruntime for float builds, the reference interpreter running the same
    quantized graph for int8/int4 ones."""
    import onnx
    import onnxruntime as ort
    if precision in ("fp32", "bf16"):
        sess = ort.InferenceSession(str(path))
        return lambda feed: dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))
    from qcompile.frontend import from_proto
    from qcompile.ir.interpret import run
    from qcompile.passes import run_pipeline
    from qcompile.passes.assign_precision import PrecisionConfig, assign
    from qcompile.passes.quantize_weights import quantize_weights
    graph, _ = run_pipeline(from_proto(onnx.load(str(path))))
    assign(graph, PrecisionConfig(precision))
    quantize_weights(graph)
    return lambda feed: run(graph, feed)


def prepare(out: Path, target: str, bench: bool = True) -> None:
    import onnx

    from qcompile.build import BuildOptions, build
    from qcompile.zoo import LlamaConfig, make_bert, make_llama, make_mlp
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    models = {"mlp": make_mlp(), "llama": make_llama(LlamaConfig(), with_kv_cache=True), "bert": make_bert(),
              "llama_bf16": make_llama(LlamaConfig(), with_kv_cache=True),
              "llama_int8": make_llama(LlamaConfig(), with_kv_cache=True),
              "llama_int4": make_llama(LlamaConfig(), with_kv_cache=True)}
    for name, model in models.items():
        path = out / f"{name}.onnx"
        onnx.save(model, str(path))
        build(path, BuildOptions(target=target, precision=PRECISION.get(name, "fp32"), max_seq_len=64,
                                 out_dir=out / name))
        reference = _reference(path, PRECISION.get(name, "fp32"))
        cases = [{"feed": feed, "expected": reference(feed)} for feed in _feeds(name, model, rng)]
        np.save(out / f"{name}_cases.npy", np.array(cases, dtype=object), allow_pickle=True)
        path.unlink()
        print(f"prepared {name}", flush=True)
    if not bench:
        return
    bench = make_llama(LlamaConfig(**BENCH), with_kv_cache=True)
    for init in bench.graph.initializer:      # periodic values: the library compresses for transport
        n = int(np.prod(init.dims))
        pattern = (np.sin(np.arange(4096)) * 0.02).astype(np.float32)
        init.raw_data = np.resize(pattern, n).astype(np.float32).tobytes()
        del init.float_data[:]
    onnx.save(bench, str(out / "bench.onnx"))
    for precision in BENCH_PRECISIONS:
        build(out / "bench.onnx", BuildOptions(target=target, precision=precision, max_seq_len=512,
                                               out_dir=out / f"bench_{precision}", name="bench"))
        print(f"prepared bench ({precision})", flush=True)
    (out / "bench.onnx").unlink()


def run(root: Path, json_out: Path | None, bench: bool = True) -> int:
    import qcompile
    report, failed = {"cases": [], "bench": {}}, 0
    try:
        report["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        report["gpu"] = "?"
    print("GPU:", report["gpu"], flush=True)
    for name in ("mlp", "llama", "bert", "llama_bf16", "llama_int8", "llama_int4"):
        model = qcompile.load(root / name / f"{name}.so")
        for i, case in enumerate(np.load(root / f"{name}_cases.npy", allow_pickle=True)):
            got = model(**case["feed"])
            for out, want in case["expected"].items():
                err = float(np.max(np.abs(got[out].astype(np.float64) - want))) if want.size else 0.0
                scale = float(np.max(np.abs(want))) if want.size else 0.0
                ok = got[out].shape == want.shape and err <= TOLERANCE.get(name, 1e-4) * max(scale, 1.0)
                failed += not ok
                report["cases"].append({"model": name, "case": i, "output": out, "shape": list(want.shape),
                                        "max_abs_err": err, "max_abs": scale, "ok": ok})
                print(f"{'ok  ' if ok else 'FAIL'} {name}[{i}] {out} {list(want.shape)} max|err| {err:.3g} "
                      f"(max|ref| {scale:.3g})", flush=True)
    # the session API keeps the KV cache on the GPU: its prefill logits against onnxruntime's
    case = np.load(root / "llama_cases.npy", allow_pickle=True)[0]
    session = qcompile.load(root / "llama" / "llama.so").session()
    got = session.prefill(case["feed"]["input_ids"][0])
    want = case["expected"]["logits"][0, -1]
    err = float(np.max(np.abs(got - want)))
    ok = err <= 1e-4 * max(float(np.max(np.abs(want))), 1.0)
    failed += not ok
    report["cases"].append({"model": "llama", "case": "session-prefill", "output": "logits", "max_abs_err": err,
                            "ok": ok})
    print(f"{'ok  ' if ok else 'FAIL'} llama session prefill logits max|err| {err:.3g}", flush=True)
    if bench:
        report["bench"] = {p: _bench(root / f"bench_{p}", p) for p in BENCH_PRECISIONS}
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))
    print(f"{'all cases match' if not failed else f'{failed} output(s) differ'}", flush=True)
    return 1 if failed else 0


def _bench(folder: Path, precision: str) -> dict:
    import qcompile
    manifest = json.loads((folder / "bench.manifest.json").read_text())
    weight_bytes = manifest["weights"]["bytes"]
    model = qcompile.load(folder / "bench.so")
    kv = [i["name"] for i in manifest["inputs"] if i["name"].startswith("past_")]
    shape = manifest["inputs"][1]["shape"]
    out = {"weight_bytes": weight_bytes}
    for past in (0, 255):
        feed = {"input_ids": np.ones((1, 1), np.int64),
                **{k: np.zeros((1, shape[1], past, shape[3]), np.float32) for k in kv}}
        for _ in range(3):
            model(**feed)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            model(**feed)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        out[f"decode_past{past}_ms"] = med * 1e3
        out[f"decode_past{past}_weight_GBps"] = weight_bytes / med / 1e9
        print(f"bench {precision} decode (past {past}): {med * 1e3:.3f} ms per token, {weight_bytes / med / 1e9:.1f} GB/s of "
              f"weights ({weight_bytes / 2**20:.0f} MiB), host copies included", flush=True)
    # decode through the session API: the KV cache stays on the GPU, one row of logits comes back
    session = model.session()
    session.prefill(np.ones(255, np.int64))
    times = []
    for i in range(32):
        t = time.perf_counter()
        session.decode(1 + i)
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    # a token reads every weight but the embedding table (one row of it): fp32 under the fp32
    # policy, bf16 under the others
    emb = BENCH["vocab_size"] * BENCH["hidden_size"] * (4 if precision == "fp32" else 2)
    read = weight_bytes - emb
    out["session_decode_past255_ms"] = med * 1e3
    out["session_decode_weight_GBps"] = weight_bytes / med / 1e9
    out["session_decode_read_GBps"] = read / med / 1e9
    print(f"bench {precision} session decode (past 255-287): {med * 1e3:.3f} ms per token ({1 / med:.0f} tokens/s), "
          f"{read / med / 1e9:.1f} GB/s of the {read / 2**20:.0f} MiB of weights a token reads", flush=True)
    session.close()
    # prefill through the session too: only the last token's logits come back
    gemm_params = 2 * BENCH["num_layers"] * BENCH["hidden_size"] * (
        BENCH["hidden_size"] + BENCH["hidden_size"] // BENCH["num_heads"] * BENCH["num_kv_heads"]
        + 1.5 * BENCH["intermediate_size"]) + BENCH["vocab_size"] * BENCH["hidden_size"]
    session = model.session()
    for tokens in (16, 128):
        times = []
        for _ in range(10):
            session.reset()
            t = time.perf_counter()
            session.prefill(np.ones(tokens, np.int64))
            times.append(time.perf_counter() - t)
        med = statistics.median(times[1:])
        out[f"prefill_{tokens}_ms"] = med * 1e3
        out[f"prefill_{tokens}_GOPs"] = 2 * gemm_params * tokens / med / 1e9
        print(f"bench {precision} session prefill ({tokens} tokens): {med * 1e3:.3f} ms, "
              f"{2 * gemm_params * tokens / med / 1e9:.0f} GOP/s in the GEMMs", flush=True)
    session.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--target", default="cuda-sm90")
    p.add_argument("--no-bench", action="store_true", help="only the small models")
    r = sub.add_parser("run")
    r.add_argument("dir", type=Path)
    r.add_argument("--json", type=Path)
    r.add_argument("--no-bench", action="store_true", help="only the cases (the bench decoders are not there)")
    args = ap.parse_args()
    if args.cmd == "prepare":
        prepare(args.dir, args.target, not args.no_bench)
        return 0
    return run(args.dir, args.json, not args.no_bench)


if __name__ == "__main__":
    sys.exit(main())
