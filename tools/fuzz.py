#!/usr/bin/env python3
"""Fuzz campaigns longer than CI runs: corrupted models through the build's front half, or
random valid graphs compiled to native libraries against onnxruntime.

Each case mutates a bundled model's bytes (bit flips, overwritten or inserted bytes, truncation,
random bytes) and runs import, checks, passes, quantization, plan and kernel generation on it.
Every case must end in a build or a qcompile error; anything else (an escaped exception, a hang)
is listed with its mutations, and with --save its bytes are kept to reproduce it.

  python tools/fuzz.py --count 10000                 a campaign from seed 0
  python tools/fuzz.py --count 500 --seed 7 --save fuzz_cases/ --timeout 60
  python tools/fuzz.py --graphs 10000 --seed 3      10,000 random valid graphs (tests/test_random_graphs.py's
                                                      generator) compiled at fp32, each against onnxruntime, in
                                                      processes of --chunk graphs; hypothesis prints the smallest
                                                      failing graph, and a build or run past --timeout is a hang
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qcompile.testing import fuzz  # noqa: E402


STATS = re.compile(r"(\d+) passing examples?, (\d+) failing examples?, (\d+) invalid examples?")


def graph_campaign(count: int, seed: int, chunk: int, timeout: int) -> int:
    """pytest on the compiled random-graph test, one process per chunk (each with its own hypothesis
    seed, so no process holds thousands of loaded libraries); totals from hypothesis' statistics."""
    root = Path(__file__).resolve().parents[1]
    passed = failed = invalid = 0
    start = time.perf_counter()
    bar = tqdm(total=count, unit="graph")
    for i, first in enumerate(range(0, count, chunk)):
        n = min(chunk, count - first)
        with tempfile.TemporaryDirectory(prefix="qcompile_graphs_") as tmp:
            run = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", tmp,
                 "--hypothesis-show-statistics", f"--hypothesis-seed={seed * 100003 + i}",
                 str(root / "tests" / "test_random_graphs.py"), "-k", "compiles"],
                cwd=root, capture_output=True, text=True,
                env={**os.environ, "QCOMPILE_FUZZ_COMPILED": str(n), "QCOMPILE_FUZZ_TIMEOUT": str(timeout)})
        stats = STATS.findall(run.stdout)
        passed += sum(int(s[0]) for s in stats)
        invalid += sum(int(s[2]) for s in stats)
        bar.update(n)
        if run.returncode:
            failed += 1
            bar.close()
            print(run.stdout[-20000:] + run.stderr[-5000:])
            print(f"chunk {i} (hypothesis seed {seed * 100003 + i}) failed after {passed} graphs passed")
            return 1
    bar.close()
    print(f"{passed} random graphs compiled and matched onnxruntime in {time.perf_counter() - start:.0f} s "
          f"(seed {seed}, {invalid} draws the generator rejected); 0 failures, 0 hangs past {timeout} s")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="cases to run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the campaign's random seed (default: %(default)s)")
    p.add_argument("--timeout", type=int, default=120, help="seconds after which a case is a hang (default: %(default)s)")
    p.add_argument("--save", type=Path, help="keep the bytes of every escaped or hung case in this folder")
    p.add_argument("--graphs", type=int, metavar="N", help="instead: N random valid graphs compiled and compared")
    p.add_argument("--chunk", type=int, default=500, help="graphs per process with --graphs (default: %(default)s)")
    args = p.parse_args(argv)
    if args.graphs:
        return graph_campaign(args.graphs, args.seed, args.chunk, args.timeout)
    kinds, refusals, bad = collections.Counter(), collections.Counter(), []
    slowest = (0.0, -1)
    bar = tqdm(total=args.count, unit="case")

    def on_case(i, outcome, data):
        nonlocal slowest
        kinds[outcome.kind] += 1
        slowest = max(slowest, (outcome.seconds, i))
        if outcome.kind == "refused":
            refusals[outcome.detail.split("]")[0] + "]"] += 1
        elif outcome.kind in ("escaped", "hang"):
            bad.append((i, outcome))
            if args.save:
                args.save.mkdir(parents=True, exist_ok=True)
                (args.save / f"case_{args.seed}_{i}.onnx").write_bytes(data)
        bar.update()
        bar.set_postfix(escaped=kinds["escaped"], hangs=kinds["hang"])

    start = time.perf_counter()
    results = fuzz.campaign(args.count, args.seed, args.timeout, on_case)
    bar.close()
    mutations = {i: done for i, _, done in results}
    print(f"{args.count} cases from seed {args.seed} in {time.perf_counter() - start:.0f} s: {kinds['built']} built, "
          f"{kinds['refused']} refused with a qcompile error, {kinds['escaped']} escaped, {kinds['hang']} hangs; "
          f"slowest case {slowest[1]} ({slowest[0]:.1f} s)")
    print("refusals by phase: " + ", ".join(f"{k} {v}" for k, v in refusals.most_common()))
    for i, outcome in bad:
        print(f"case {i} ({', '.join(mutations[i])}): {outcome.kind}: {outcome.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
