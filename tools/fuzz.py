#!/usr/bin/env python3
"""Fuzz campaigns longer than CI runs: corrupted models through the build's front half, or
random valid graphs compiled to native libraries against onnxruntime.

Each case mutates a bundled model's bytes (bit flips, overwritten or inserted bytes, truncation,
random bytes) and runs import, checks, passes, quantization, plan and kernel generation on it.
Every case must end in a build or a qcompile error; anything else (an escaped exception, a hang)
is listed with its mutations, and with --save its bytes are kept to reproduce it.

  python tools/fuzz.py --count 10000                 a campaign from seed 0
  python tools/fuzz.py --count 500 --seed 7 --save fuzz_cases/ --timeout 60
  python tools/fuzz.py --graphs 500                   500 random graphs (tests/test_random_graphs.py's
                                                      generator) compiled at fp32, each against onnxruntime;
                                                      hypothesis prints the smallest failing graph
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qcompile.testing import fuzz  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="cases to run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the campaign's random seed (default: %(default)s)")
    p.add_argument("--timeout", type=int, default=120, help="seconds after which a case is a hang (default: %(default)s)")
    p.add_argument("--save", type=Path, help="keep the bytes of every escaped or hung case in this folder")
    p.add_argument("--graphs", type=int, metavar="N", help="instead: N random valid graphs compiled and compared")
    args = p.parse_args(argv)
    if args.graphs:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                               str(root / "tests" / "test_random_graphs.py"), "-k", "compiles"], cwd=root,
                              env={**os.environ, "QCOMPILE_FUZZ_COMPILED": str(args.graphs)}).returncode
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
