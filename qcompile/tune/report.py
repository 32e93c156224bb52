"""`qcompile tune --report`: per kernel of a model, the default schedule's time against the best
record's, from the database alone, with the bytes and operations per call as GB/s and GOP/s."""

from __future__ import annotations

from pathlib import Path


def report(model_path: Path, build_opts, opts) -> str:
    from .tuner import open_session
    s = open_session(model_path, build_opts, opts, say=lambda text: None)
    rows, total_default, total_best = [], 0.0, 0.0
    for w in s.workloads:
        recs = [r for r in s.database.measured(w.key, s.env, s.scenario) if r["status"] == "ok"]
        default = w.space.default()
        d = min((r["time_us"] for r in recs if r["params"] == default), default=None)
        best = min(recs, key=lambda r: r["time_us"], default=None)
        rejected = sum(1 for r in s.database.measured(w.key, s.env, s.scenario) if r["status"] != "ok")
        if d is None or best is None:
            rows.append((w.kernel, w.key, w.uses, None, None, None, "", rejected))
            continue
        total_default += w.uses * d
        total_best += w.uses * best["time_us"]
        rows.append((w.kernel, w.key, w.uses, d, best["time_us"], w, best["params"], rejected))
    lines = [f"schedule records for {Path(model_path).name} on {s.env['device']} ({s.preset.name}), at {s.scenario}",
             f"{'kernel':<16} {'workload':<44} {'uses':>4} {'default us':>10} {'tuned us':>9} {'gain':>6} "
             f"{'GB/s dflt>tuned':>16} {'GOP/s':>7} {'rej':>3}  params"]
    for kernel, key, uses, d, b, w, params, rej in rows:
        short = key if len(key) <= 44 else key[:41] + "..."
        if d is None:
            lines.append(f"{kernel:<16} {short:<44} {uses:>4} {'untuned':>10}")
            continue
        gbs = f"{w.bytes / d / 1e3:.1f}>{w.bytes / b / 1e3:.1f}"
        gops = f"{w.ops / b / 1e3:.1f}" if w.ops else "-"
        lines.append(f"{kernel:<16} {short:<44} {uses:>4} {d:>10.1f} {b:>9.1f} {d / b:>5.2f}x {gbs:>16} {gops:>7} "
                     f"{rej:>3}  {params}")
    if total_best:
        lines.append(f"all tuned kernels, weighted by launches per call: {total_default:.0f} us -> {total_best:.0f} us "
                     f"({total_default / total_best:.2f}x)")
    return "\n".join(lines)
