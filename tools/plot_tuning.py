#!/usr/bin/env python3
"""Plot the sweep of a schedule-tuning run (the JSON-lines database `qcompile tune` writes).

One subplot per workload: measured time of each candidate against its trial number (file order),
the best-so-far as a step line, and failed candidates (wrong, build-error, run-error, timeout) as
red x markers along the top edge. The first record of a workload is the default schedule, which
the tuner always measures first. Records are grouped by workload, scenario and device, since times
measured in different scenarios or on different machines are not comparable. Also prints a table.

  python tools/plot_tuning.py schedules/native/*.jsonl -o docs/tuning.png
  python tools/plot_tuning.py db.jsonl --scenario decode --workload gemm1 --top 4
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def load(paths: list[str], scenario: str | None, workload: str | None) -> dict[tuple, list[dict]]:
    """Records grouped by (workload, scenario, device), each group in file order."""
    groups: dict[tuple, list[dict]] = {}
    for path in paths:
        try:
            f = open(path, encoding="utf-8", errors="replace")
        except OSError as exc:
            print(f"warning: {path}: {exc.strerror}", file=sys.stderr)
            continue
        with f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    rec = None
                if not isinstance(rec, dict) or "workload" not in rec or "status" not in rec:
                    print(f"warning: {path}:{i}: skipped a corrupt record", file=sys.stderr)
                    continue
                if scenario is not None and rec.get("scenario") != scenario:
                    continue
                if workload is not None and workload not in str(rec["workload"]):
                    continue
                key = (str(rec["workload"]), rec.get("scenario"), rec.get("device"))
                groups.setdefault(key, []).append(rec)
    return groups


def time_of(rec: dict) -> float | None:
    t = rec.get("time_us")
    ok = rec["status"] == "ok" and isinstance(t, (int, float)) and math.isfinite(t) and t > 0
    return float(t) if ok else None


def short(key: tuple, width: int = 40, scenario: bool = True) -> str:
    workload = key[0] if len(key[0]) <= width else key[0][:width - 1] + "…"
    return workload + (f" [{key[1]}]" if key[1] and scenario else "")


def summarize(recs: list[dict]) -> dict:
    times = [time_of(r) for r in recs]
    ok = [t for t in times if t is not None]
    first, best = times[0], min(ok, default=None)
    return {"times": times, "trials": len(recs), "failed": len(recs) - len(ok), "first": first, "best": best,
            "speedup": first / best if first and best else None}


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def plot_one(ax, key: tuple, s: dict) -> None:
    xs = [i for i, t in enumerate(s["times"]) if t is not None]
    ys = [t for t in s["times"] if t is not None]
    ax.plot(xs, ys, "o-", ms=3, lw=0.8, color="tab:blue", label="measured")
    best, run = [], math.inf
    for t in ys:
        run = min(run, t)
        best.append(run)
    if xs and xs[-1] < len(s["times"]) - 1:  # carry the best to the last trial, even a failed one
        xs, best = xs + [len(s["times"]) - 1], best + best[-1:]
    ax.step(xs, best, where="post", color="tab:green", lw=1.5, label="best so far")
    if s["first"] is not None:
        ax.axhline(s["first"], color="grey", ls=":", lw=0.8, label=f"default {s['first']:.1f}")
    bad = [i for i, t in enumerate(s["times"]) if t is None]
    if bad:  # pinned to the top edge in axes coordinates, so failures never rescale the y axis
        ax.plot(bad, [0.97] * len(bad), "x", color="red", transform=ax.get_xaxis_transform(), clip_on=False,
                label=f"failed ({len(bad)})")
    ax.set_ylim(0, max(ys) * 1.1 if ys else 1)
    ax.set_title(short(key, scenario=False) + (f"\n{key[1]}" if key[1] else ""), fontsize=8)
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("µs per call")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Draw the sweep of a schedule-tuning run as a PNG: per workload, the measured time of "
                    "each trial, the best time so far as a step line, and failed candidates as red x marks. "
                    "Also prints a table of trials, failures, default time, best time and speedup.")
    ap.add_argument("files", nargs="+", help="schedule database(s), JSON lines written by `qcompile tune`")
    ap.add_argument("-o", "--out", default="tuning.png", help="output PNG (default: %(default)s)")
    ap.add_argument("--top", type=int, default=8,
                    help="plot at most N workloads, those with the slowest default time (default: %(default)s)")
    ap.add_argument("--scenario", help="only records of this scenario (default: all)")
    ap.add_argument("--workload", metavar="SUBSTRING", help="only workloads whose key contains SUBSTRING")
    args = ap.parse_args(argv)

    groups = load(args.files, args.scenario, args.workload)
    if not groups:
        print("no matching records", file=sys.stderr)
        return 1
    stats = {k: summarize(v) for k, v in groups.items()}
    order = sorted(stats, key=lambda k: -(stats[k]["first"] or stats[k]["best"] or 0))[:max(1, args.top)]

    print(f"{'workload':<52} {'trials':>6} {'failed':>6} {'first us':>10} {'best us':>10} {'speedup':>8}")
    for k in order:
        s = stats[k]
        print(f"{short(k):<52} {s['trials']:>6} {s['failed']:>6} {fmt(s['first']):>10} {fmt(s['best']):>10} "
              f"{fmt(s['speedup'], '.2f') + 'x' if s['speedup'] else '-':>8}")
    if len(stats) > len(order):
        print(f"({len(stats) - len(order)} more workload(s) not shown; see --top)")

    ncols = min(len(order), 3)
    nrows = math.ceil(len(order) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.4 * nrows), squeeze=False)
    for ax, k in zip(axes.flat, order):
        plot_one(ax, k, stats[k])
    for ax in list(axes.flat)[len(order):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
