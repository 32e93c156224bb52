#!/usr/bin/env python3
"""Benchmark: the same ONNX model through onnxruntime (fp32) and a qcompile artifact, in one run.

Prints the median latency of each and the ratio, per input size. A benchmark, not a test: the
numbers depend on the machine and on what else runs on it.

  python tools/bench.py                          Llama-style decoder, hidden 1024, 1 and 64 tokens
  python tools/bench.py --hidden 2048 --layers 2 --tokens 1 64 --threads 2
  python tools/bench.py --model path.onnx --feed input_ids=int64:1x64
  python tools/bench.py model [args]             the same, spelled out
  python tools/bench.py model --precision mixed --ort-int4    int4 middle layers vs onnxruntime fp32 and int4
  python tools/bench.py kernels --quick          one linear layer per precision vs onnxruntime (bench_kernels.py)
  python tools/bench.py llm model_kv.onnx         token generation: session vs onnxruntime (bench_llm.py)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timeit(fn, warmup: int, repeat: int, min_seconds: float) -> float:
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 1000:
            break
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an ONNX file (default: a generated Llama-style decoder)")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 64], help="sequence lengths to time")
    ap.add_argument("--threads", type=int, default=0, help="threads for both runtimes (0: all cores)")
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--min-seconds", type=float, default=1.0)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8", "int4", "ternary", "mixed"],
                    help="artifact precision policy (qcompile build --precision)")
    ap.add_argument("--middle", default="int4", choices=["int4", "ternary"], help="mixed: the middle layers' format")
    ap.add_argument("--group-size", type=int, default=128, choices=[32, 64, 128])
    ap.add_argument("--ort-int4", action="store_true",
                    help="also time onnxruntime on the same model quantized to int4 MatMulNBits (block = --group-size, "
                         "accuracy_level 4)")
    ap.add_argument("--out", help="keep the built artifact here")
    args = ap.parse_args()

    import onnx
    import onnxruntime as ort

    import qcompile
    from qcompile.build import BuildOptions, build
    from qcompile.zoo import LlamaConfig, make_llama

    work = Path(args.out or tempfile.mkdtemp(prefix="qcompile_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model:
        model_path = Path(args.model)
    else:
        heads = args.hidden // 64
        cfg = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=-(-args.hidden * 8 // 3 // 256) * 256,
                          num_layers=args.layers, num_heads=heads, num_kv_heads=max(heads // 4, 1), max_position=4096)
        model_path = work / f"llama_h{args.hidden}_l{args.layers}.onnx"
        onnx.save(make_llama(cfg), str(model_path))
        params = sum(int(np.prod(t.dims)) for t in onnx.load(str(model_path)).graph.initializer)
        print(f"model: Llama-style decoder, hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}, "
              f"{params / 1e6:.1f}M params ({params * 4 / 2**20:.0f} MiB fp32)")
    t = time.perf_counter()
    result = build(model_path, BuildOptions(out_dir=work, max_seq_len=max(args.tokens), precision=args.precision,
                                            middle=args.middle, group_size=args.group_size))
    print(f"build ({args.precision}): {time.perf_counter() - t:.1f}s, {result.kernels} kernels, {result.library} "
          f"({result.library.stat().st_size / 2**20:.1f} MiB)")

    opts = ort.SessionOptions()
    if args.threads:
        opts.intra_op_num_threads = args.threads
    sessions = {"ort fp32": ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])}
    if args.ort_int4:
        import logging

        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        logging.disable(logging.INFO)          # the quantizer logs every node
        quantizer = MatMulNBitsQuantizer(onnx.load(str(model_path)), block_size=args.group_size, is_symmetric=True,
                                         accuracy_level=4)
        quantizer.process()
        int4_path = work / "ort_int4.onnx"
        onnx.save(quantizer.model.model, str(int4_path))
        sessions[f"ort int4 b{args.group_size}"] = ort.InferenceSession(str(int4_path), opts,
                                                                         providers=["CPUExecutionProvider"])
    ours = qcompile.load(result.library, num_threads=args.threads)
    rng = np.random.default_rng(0)
    names = list(sessions)
    print(f"{'tokens':>6} " + " ".join(f"{n + ' ms':>17}" for n in names) + f" {'qcompile ms':>12} "
          + " ".join(f"{'x vs ' + n:>19}" for n in names) + f" {'rel err vs fp32':>16}")
    for n in args.tokens:
        feeds = {"input_ids": rng.integers(0, args.vocab, (1, n)).astype(np.int64)}
        ref = sessions["ort fp32"].run(None, feeds)[0]
        got = ours(**feeds)["logits"]
        times = [timeit(lambda s=s: s.run(None, feeds), 2, args.repeat, args.min_seconds) for s in sessions.values()]
        t_qc = timeit(lambda: ours(**feeds), 2, args.repeat, args.min_seconds)
        err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
        print(f"{n:>6} " + " ".join(f"{t * 1e3:>17.2f}" for t in times) + f" {t_qc * 1e3:>12.2f} "
              + " ".join(f"{t / t_qc:>19.2f}" for t in times) + f" {err:>16.2e}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["kernels"]:          # one linear layer, qcompile vs onnxruntime: tools/bench_kernels.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_kernels import main as kernels_main
        sys.exit(kernels_main(sys.argv[2:]))
    if sys.argv[1:2] == ["llm"]:              # token generation with a KV-cache decoder: tools/bench_llm.py
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_llm import main as llm_main
        sys.exit(llm_main(sys.argv[2:]))
    if sys.argv[1:2] == ["model"]:            # the whole-model benchmark below (also the default)
        del sys.argv[1]
    sys.exit(main())
