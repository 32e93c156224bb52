"""The schedule database: JSON lines in schedules/<target>/<device>.jsonl, one measured candidate per
line, appended (and fsync'ed) as soon as it is measured, so a killed tuning run loses nothing it
finished. A line that does not parse is skipped with a warning naming the file and line.

A record's identity is (workload, params, environment); the environment is the target preset, its
TVM target (which carries the codegen flags), the device, the thread count and the qcompile and TVM
versions. `choose` picks, per workload: the fastest exact match; else the fastest record of the same
workload from another qcompile/TVM version; else the fastest record of the nearest shape of the same
class; else the rule-based default -- and says which.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .space import Space

ENV_FIELDS = ("target", "tvm_target", "device", "threads")
VERSION_FIELDS = ("qcompile", "tvm")
REQUIRED = ("workload", "cls", "dims", "family", "params", "status", *ENV_FIELDS, *VERSION_FIELDS)
STATUSES = ("ok", "wrong", "build-error", "run-error", "timeout")


def default_root() -> Path:
    """$QCOMPILE_SCHEDULES, else the schedules/ folder of this checkout (shipped records)."""
    env = os.environ.get("QCOMPILE_SCHEDULES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "schedules"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def path_for(root: Path, target: str, device: str) -> Path:
    return Path(root) / slug(target) / f"{slug(device)}.jsonl"


@dataclass
class Choice:
    params: dict
    source: str                  # tuned | tuned-other-version | nearest | default
    record: dict | None = None

    def describe(self) -> str:
        if self.record is None:
            return "default (rule-based)"
        r = self.record
        where = f"{r['time_us']:.1f} us, {r.get('runner', 'local')}"
        if self.source == "nearest":
            return f"nearest tuned shape {r['workload']} ({where})"
        if self.source == "tuned-other-version":
            return f"tuned with qcompile {r['qcompile']} / TVM {r['tvm']} ({where})"
        return f"tuned ({where})"


@dataclass
class Database:
    path: Path
    records: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, path: Path) -> "Database":
        db = cls(Path(path))
        if not db.path.exists():
            return db
        with open(db.path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    missing = [k for k in REQUIRED if k not in rec] if isinstance(rec, dict) else ["(not an object)"]
                    if missing:
                        raise ValueError(f"missing {', '.join(missing)}")
                    if rec["status"] not in STATUSES:
                        raise ValueError(f"unknown status {rec['status']!r}")
                    if rec["status"] == "ok" and not isinstance(rec.get("time_us"), (int, float)):
                        raise ValueError("an ok record without time_us")
                except ValueError as exc:      # json.JSONDecodeError is a ValueError
                    db.warnings.append(f"{db.path}:{i}: skipped a corrupt record ({str(exc)[:80]})")
                    continue
                db.records.append(rec)
        return db

    def append(self, record: dict) -> None:
        """Write one record durably. A line cut short by a killed run is closed first, so the
        new record never merges with it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() > 0:
                with open(self.path, "rb") as r:
                    r.seek(-1, os.SEEK_END)
                    if r.read(1) != b"\n":
                        f.write(b"\n")
            f.write((json.dumps(record, sort_keys=True) + "\n").encode())
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)

    def measured(self, workload: str, env: dict, scenario: str) -> list[dict]:
        """Records of this workload measured in exactly this environment and scenario (resume)."""
        return [r for r in self.records if r["workload"] == workload and r.get("scenario") == scenario
                and _same(r, env, ENV_FIELDS + VERSION_FIELDS)]

    def choose(self, workload: str, cls: str, dims: list[int], space: Space, env: dict) -> Choice:
        return _choose_in(self, workload, cls, dims, space, env)


def _same(record: dict, env: dict, fields) -> bool:
    return all(record.get(k) == env.get(k) for k in fields)


def _best(records: list[dict], source: str, space: Space) -> Choice:
    """Fastest record, taken within one measuring scenario (decode preferred): times measured
    at different sequence lengths are not comparable."""
    scenarios = sorted({str(r.get("scenario")) for r in records})
    pick = next((x for x in scenarios if x.startswith("decode")), scenarios[0])
    rec = min((r for r in records if str(r.get("scenario")) == pick), key=lambda r: r["time_us"])
    return Choice(space.complete(rec["params"]), source, rec)


def _distance(a: list[int], b: list[int]) -> float:
    try:
        return sum(abs(math.log2(max(x, 1) / max(y, 1))) for x, y in zip(a, b))
    except (TypeError, ValueError):
        return math.inf


class Chooser:
    """A build's view of the database: every file of its target, filtered to its environment
    (device and threads only where known: a cross build matches any device of the target).
    Remembers what it chose, per workload, for the build's report and manifest."""

    def __init__(self, root: Path, env: dict):
        self.env = env
        self.files = sorted((Path(root) / slug(env["target"])).glob("*.jsonl"))
        merged = Database(Path(root))
        for f in self.files:
            db = Database.open(f)
            merged.records += db.records
            merged.warnings += db.warnings
        if env.get("device") is not None:
            merged.records = [r for r in merged.records if slug(r.get("device", "")) == slug(env["device"])]
        self.db = merged
        self.chosen: dict[str, Choice] = {}

    @property
    def warnings(self) -> list[str]:
        return self.db.warnings

    def choose(self, key: str, cls: str, dims: list[int], space: Space) -> Choice:
        if key not in self.chosen:
            match_env = {k: v for k, v in self.env.items() if v is not None}
            self.chosen[key] = _choose_in(self.db, key, cls, dims, space, match_env)
        return self.chosen[key]


def _choose_in(db: Database, key, cls, dims, space, env) -> Choice:
    fields = tuple(k for k in ENV_FIELDS if k in env)
    ok = [r for r in db.records if r["status"] == "ok" and _same(r, env, fields) and space.contains(r["params"])]
    exact = [r for r in ok if r["workload"] == key]
    current = [r for r in exact if _same(r, env, VERSION_FIELDS)]
    if current:
        return _best(current, "tuned", space)
    if exact:
        return _best(exact, "tuned-other-version", space)
    near = [r for r in ok if r["cls"] == cls and len(r["dims"]) == len(dims)]
    if near:
        dist = min(_distance(r["dims"], dims) for r in near)
        if math.isfinite(dist):
            return _best([r for r in near if _distance(r["dims"], dims) == dist], "nearest", space)
    return Choice(space.default(), "default")
