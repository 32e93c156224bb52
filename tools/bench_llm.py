#!/usr/bin/env python3
"""Benchmark: token generation with a KV-cache decoder, qcompile's session vs onnxruntime on the
same ONNX file, in one run. A benchmark, not a test: numbers depend on the machine and its load.

  python tools/bench.py llm models/smollm2_kv.onnx --precision mixed --prompt 32 --new 64
  python tools/bench.py llm models/smollm2_kv.onnx --precision fp32 --threads 1 2

The ONNX file must take input_ids (+ position_ids) and past_key_values.* and return logits and
present.* (tools/export_model.py --kv-cache writes such files). Both runtimes prefill the same
prompt, then decode greedily, each feeding back its own cache; reported: prefill ms, decode
tokens/s, and how far qcompile's first logits and greedy tokens agree with onnxruntime's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def ort_generate(sess, prompt: np.ndarray, new: int):
    """Greedy generation with onnxruntime, feeding present.* back as past_key_values.*."""
    inputs = {i.name: i for i in sess.get_inputs()}
    past = {n: np.zeros([1, i.shape[1], 0, i.shape[3]], np.float32) for n, i in inputs.items() if "past" in n}
    outputs = [o.name for o in sess.get_outputs()]
    tokens, pos, first = prompt, 0, None
    out_ids, times = [], []
    for _ in range(new):
        feeds = {"input_ids": tokens[None], **past}
        if "position_ids" in inputs:
            feeds["position_ids"] = np.arange(pos, pos + len(tokens))[None]
        t = time.perf_counter()
        result = dict(zip(outputs, sess.run(None, feeds)))
        times.append(time.perf_counter() - t)
        logits = result["logits"][0, -1]
        first = logits if first is None else first
        pos += len(tokens)
        past = {n: result[n.replace("past_key_values", "present")] for n in past}
        tokens = np.array([int(np.argmax(logits))], np.int64)
        out_ids.append(int(tokens[0]))
    return out_ids, first, times[0], times[1:]


def qc_generate(session, prompt: np.ndarray, new: int):
    session.reset()
    t = time.perf_counter()
    logits = session.prefill(prompt)
    prefill = time.perf_counter() - t
    first, out_ids, times = logits, [], []
    for i in range(new):
        out_ids.append(int(np.argmax(logits)))
        if i + 1 < new:
            t = time.perf_counter()
            logits = session.decode(out_ids[-1])
            times.append(time.perf_counter() - t)
    return out_ids, first, prefill, times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a KV-cache decoder ONNX file")
    ap.add_argument("--precision", default="mixed", choices=["fp32", "bf16", "int8", "int4", "ternary", "mixed"])
    ap.add_argument("--middle", default="int4", choices=["int4", "ternary"])
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    ap.add_argument("--new", type=int, default=64, help="tokens to generate")
    ap.add_argument("--threads", type=int, nargs="+", default=[1], help="thread counts to time (both runtimes)")
    ap.add_argument("--lib", help="use this built library instead of building one")
    ap.add_argument("--out", help="keep the built library here")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    import qcompile
    from qcompile.build import BuildOptions, build

    if args.lib:
        lib = Path(args.lib)
    else:
        work = Path(args.out or tempfile.mkdtemp(prefix="qcompile_bench_llm_"))
        t = time.perf_counter()
        context = 1 << (args.prompt + args.new - 1).bit_length()
        result = build(args.model, BuildOptions(out_dir=work, precision=args.precision, middle=args.middle,
                                                max_seq_len=context))
        lib = result.library
        print(f"build ({args.precision}, context {context}): {time.perf_counter() - t:.1f}s, "
              f"{lib.stat().st_size / 2**20:.1f} MiB")
    vocab = qcompile.load(lib).vocab_size
    prompt = (np.arange(1, args.prompt + 1) * 7919 % vocab).astype(np.int64)
    print(f"{'threads':>7} {'ort prefill ms':>15} {'qc prefill ms':>14} {'ort tok/s':>10} {'qc tok/s':>9} "
          f"{'x':>6} {'logit err':>10} {'same tokens':>12}")
    for threads in args.threads:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(args.model), opts, providers=["CPUExecutionProvider"])
        session = qcompile.load(lib, num_threads=threads).session()
        qc_generate(session, prompt, 4)                      # warm-up: pages, pool, caches
        ort_generate(sess, prompt, 4)
        ort_ids, ort_first, ort_prefill, ort_steps = ort_generate(sess, prompt, args.new)
        qc_ids, qc_first, qc_prefill, qc_steps = qc_generate(session, prompt, args.new)
        ort_rate, qc_rate = 1 / np.median(ort_steps), 1 / np.median(qc_steps)
        err = float(np.abs(qc_first - ort_first).max() / np.abs(ort_first).max())
        same = next((i for i, (a, b) in enumerate(zip(ort_ids, qc_ids)) if a != b), len(qc_ids))
        print(f"{threads:>7} {ort_prefill * 1e3:>15.1f} {qc_prefill * 1e3:>14.1f} {ort_rate:>10.1f} {qc_rate:>9.1f} "
              f"{qc_rate / ort_rate:>6.2f} {err:>10.2e} {f'{same}/{len(qc_ids)}':>12}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
