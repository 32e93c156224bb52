"""Runs a pipeline: times every pass, dumps the IR after each (--dump-ir), verifies in debug mode."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PassError, QCompileError, VerifyError
from ..ir.graph import Graph
from ..ir.printer import to_text
from ..ir.verify import verify
from .pipeline import get_pipeline
from .registry import get_pass


@dataclass
class PassRecord:
    phase: str
    name: str
    seconds: float
    nodes_before: int
    nodes_after: int


@dataclass
class PipelineReport:
    pipeline: str
    records: list[PassRecord] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.records)

    def table(self) -> str:
        lines = [f"{'phase':<12} {'pass':<18} {'ms':>9} {'nodes':>13}"]
        for r in self.records:
            lines.append(f"{r.phase:<12} {r.name:<18} {r.seconds * 1e3:9.2f} {r.nodes_before:6d} -> {r.nodes_after:<5d}")
        lines.append(f"{'total':<31} {self.seconds * 1e3:9.2f}")
        return "\n".join(lines)


def debug_enabled() -> bool:
    return os.environ.get("QCOMPILE_DEBUG", "") not in ("", "0")


def run_pipeline(g: Graph, pipeline: str = "default", dump_ir: str | os.PathLike | None = None,
                 verify_each: bool | None = None) -> tuple[Graph, PipelineReport]:
    """Run the named pipeline on a copy of g; return the new graph and a per-pass report."""
    verify_each = debug_enabled() if verify_each is None else verify_each
    dump_dir = Path(dump_ir) if dump_ir else None
    if dump_dir:
        dump_dir.mkdir(parents=True, exist_ok=True)
        (dump_dir / "000_input.txt").write_text(to_text(g))
    report = PipelineReport(pipeline)
    g = g.copy()
    step = 0
    for phase in get_pipeline(pipeline):
        for name in phase.passes:
            info = get_pass(name)
            before = len(g.nodes)
            start = time.perf_counter()
            try:
                g = info.fn(g)
            except QCompileError:
                raise
            except Exception as exc:
                raise PassError(f"pass '{name}' failed: {type(exc).__name__}: {exc}", phase=f"pass {name}") from exc
            elapsed = time.perf_counter() - start
            step += 1
            report.records.append(PassRecord(phase.name, name, elapsed, before, len(g.nodes)))
            if dump_dir:
                (dump_dir / f"{step:03d}_{phase.name}_{name}.txt").write_text(to_text(g))
            if verify_each:
                try:
                    verify(g)
                except VerifyError as exc:
                    exc.phase = f"verify after {name}"
                    raise
    return g, report
