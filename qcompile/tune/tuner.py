"""`qcompile tune`: measure schedule candidates for every tunable kernel of a model, on this machine,
on a device reached through TVM's RPC tracker, or on one reached by ssh (a C bench program), and
append the results to the schedule database.

Per workload, most important first (launches x bytes moved): the rule-based default is built and
run first (its output is the reference every other candidate must match), then candidates from
qcompile/tune/search.py, built in parallel worker processes with a timeout and run one at a time
(a first call that is checked and warms up, then timed rounds; the median is kept). A candidate that fails to build, crashes, hangs or computes different numbers is
recorded as such and never chosen. Every record is on disk before the next candidate starts.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import QCompileError
from . import db as dbmod
from . import env as envmod
from .search import propose


class TuneError(QCompileError):
    phase = "tune"


@dataclass
class TuneOptions:
    trials: int = 12                   # candidates per workload (default included)
    time_budget: float | None = None   # seconds for the whole run
    resume: bool = False               # count records already measured here towards the trials
    workers: int = max(1, min(4, os.cpu_count() or 1))   # parallel candidate builds
    rpc: str | None = None             # host:port of a TVM RPC tracker
    device_key: str | None = None      # the tracker's key of the devices to measure on
    ssh: str | None = None             # a host reached by `ssh_command HOST 'script'`: the C bench runs there
    ssh_command: str = "ssh"           # e.g. "ssh -p 2222 -i key", or "adb -s SERIAL shell" with ssh "-"
    bench_program: str | None = None   # qc_bench built for the target (run_session sets it for --ssh)
    dims: dict[str, int] = field(default_factory=dict)   # symbolic dims to measure at (else decode)
    repeat: int = 7
    min_repeat_ms: int = 20
    build_timeout: float = 120.0
    run_timeout: float = 60.0
    seed: int = 0
    only: list[str] = field(default_factory=list)   # substrings: tune only workloads whose key has one
    max_workloads: int | None = None


@dataclass
class WorkloadResult:
    key: str
    kernel: str
    uses: int
    bytes: int
    ops: int
    default_us: float | None
    best_us: float | None
    best_params: dict | None
    tried: int
    failed: int


@dataclass
class TuneResult:
    database: Path
    workloads: list[WorkloadResult]
    skipped: list[str]
    seconds: float
    scenario: str
    bind: dict


Say = Callable[[str], None]


def scenario_of(bind: dict, decode: bool) -> str:
    """Records measured at different dims are not comparable: each carries its scenario."""
    return ("decode" if decode else "one-call") + "".join(f" {k}={v}" for k, v in sorted(bind.items()))


def default_bind(front, overrides: dict[str, int]) -> dict[str, int]:
    """Every symbolic input dim 1 (one token, one sequence), a decoder's past 255 tokens: one
    decode step, the call a deployed LLM makes most. --dim NAME=N changes any of them."""
    g = front.graph
    bind = {}
    from ..ir import dims
    for name in g.inputs:
        for d in g.values[name].shape or ():
            if isinstance(d, str) and dims.parse(d).is_symbol:
                bind[d] = 1
    if front.decoder is not None:
        bind[front.decoder.past] = 255
    unknown = set(overrides) - set(bind)
    if unknown:
        raise TuneError(f"--dim names unknown symbolic dims: {', '.join(sorted(unknown))}; the model has "
                        f"{', '.join(sorted(bind)) or 'none'}", phase="options")
    bind.update(overrides)
    return bind


@dataclass
class Session:
    """What tuning and its report share: the model's workloads and where their records go."""
    preset: object
    scenario: str
    bind: dict
    workloads: list
    skipped: list[str]
    env: dict
    database: dbmod.Database
    runner: str


def open_session(model_path: Path, build_opts, opts: TuneOptions, say: Say = print) -> Session:
    from ..build import front
    from ..targets.presets import get_preset
    from ..targets.tvm import tuning
    from ..targets.tvm.host import resolve

    preset = resolve(get_preset(build_opts.target))
    if preset.status == "planned":
        raise TuneError(f"target {preset.name} is planned but cannot be built yet, so it cannot be tuned",
                        phase="options")
    if preset.gpu:
        raise TuneError(f"target {preset.name}: GPU schedules come from TVM's dlight rules and cannot be tuned yet",
                        phase="options", hint="qcompile build --target cuda works without tuning")
    if opts.rpc and not opts.device_key:
        raise TuneError("--rpc needs --device-key: the key the devices registered with the tracker",
                        phase="options")
    if opts.rpc and opts.ssh:
        raise TuneError("--rpc and --ssh are two ways to reach a device: give one", phase="options")
    remote = bool(opts.rpc or opts.ssh)
    if not remote and preset.name != "native" and not _host_runs(preset):
        raise TuneError(f"target {preset.name} does not run on this machine; measure on a device with "
                        f"--rpc TRACKER:PORT --device-key KEY (TVM's RPC server there) or --ssh HOST",
                        phase="options")
    f = front(Path(model_path), build_opts, preset, "tune", lambda phase, detail: None)
    bind = default_bind(f, opts.dims)
    scenario = scenario_of(bind, f.decoder is not None and not opts.dims)
    workloads, skipped = tuning.extract(f.plan, f.kernels, bind)
    if opts.only:
        workloads = [w for w in workloads if any(s in w.key for s in opts.only)]
    workloads.sort(key=lambda w: -w.uses * w.bytes)
    if opts.max_workloads:
        workloads = workloads[:opts.max_workloads]
    device = (opts.device_key or opts.ssh) if remote else envmod.host_device(preset)
    env = envmod.environment(preset, tuning.tvm_version(), device, None if remote else os.cpu_count())
    root = build_opts.schedules or dbmod.default_root()
    database = dbmod.Database.open(dbmod.path_for(root, preset.name, device))
    for w in database.warnings:
        say(f"warning: {w}")
    runner = f"rpc:{opts.device_key}@{opts.rpc}" if opts.rpc else f"ssh:{opts.ssh}" if opts.ssh else "local"
    return Session(preset, scenario, bind, workloads, skipped, env, database, runner)


def tune(model_path: Path, build_opts, opts: TuneOptions, say: Say = print, progress: bool = True) -> TuneResult:
    from ..artifact import toolchain
    s = open_session(model_path, build_opts, opts, say)
    say(f"tuning {len(s.workloads)} workloads of {Path(model_path).name} for {s.preset.name} on {s.env['device']} "
        f"({s.runner}), at {s.scenario}; records: {s.database.path}")
    return run_session(s, opts, toolchain.for_preset(s.preset, build_opts.cc), say, progress)


def run_session(s: Session, opts: TuneOptions, tc, say: Say = print, progress: bool = True) -> TuneResult:
    """Tune every workload of a session, most important first, within the time budget."""
    from ..artifact import link
    from ..artifact.runtime import RUNTIME_DIR, include_dirs
    start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="qcompile_tune_"))
    # every candidate links the artifact's micro-kernels, runtime and thread pool (bound by the shim)
    link_objects = [str(link.compile_object(tmp / f"{src}.o", RUNTIME_DIR / f"{src}.c", tc, include_dirs()))
                    for src in ("qc_qlinear", "qc_runtime", "qc_tune_shim")]
    if opts.ssh:
        opts.bench_program = str(link.compile_program(tmp / "qc_bench", RUNTIME_DIR / "qc_bench.c", tc, include_dirs()))
    from ..targets.tvm.tuning import worker_pool
    builders = worker_pool(opts.workers, opts.build_timeout)
    runners = None if opts.rpc or opts.ssh else worker_pool(1, opts.run_timeout)
    rng = random.Random(opts.seed)
    results = []
    bar = _Bar(sum(min(opts.trials, len(w.space.points())) for w in s.workloads), progress)
    try:
        for w in s.workloads:
            if opts.time_budget and time.monotonic() - start > opts.time_budget:
                say(f"time budget of {opts.time_budget:.0f} s spent: {len(s.workloads) - len(results)} workloads "
                    f"left untuned (run again with --resume to continue)")
                break
            ctx = _Context(w, opts, s.env, s.scenario, s.bind, s.runner, s.database, tmp, dict(s.preset.tvm_target),
                           link_objects, tc, builders, runners, bar, say)
            results.append(ctx.run(rng, start))
    finally:
        bar.close()
        builders.shutdown()
        if runners:
            runners.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return TuneResult(s.database.path, results, s.skipped, time.monotonic() - start, s.scenario, s.bind)


def _host_runs(preset) -> bool:
    """Whether this machine can run code built for `preset` (its architecture and every CPU
    feature the preset requires)."""
    import platform
    from ..targets.tvm.host import host_cpu_flags
    arch = preset.tvm_target.get("mtriple", "").split("-")[0]
    return arch == platform.machine() and set(preset.cpu_features) <= host_cpu_flags()


class _Bar:
    """tqdm when it is installed and wanted, else nothing."""

    def __init__(self, total, enabled):
        self.t = None
        if enabled:
            try:
                from tqdm import tqdm
                self.t = tqdm(total=total, unit="cand", dynamic_ncols=True, leave=True)
            except ImportError:
                pass

    def step(self, text):
        if self.t:
            self.t.set_postfix_str(text, refresh=False)
            self.t.update(1)

    def write(self, text, say):
        if self.t:
            self.t.write(text)
        else:
            say(text)

    def close(self):
        if self.t:
            self.t.close()


@dataclass
class _Context:
    """One workload's tuning: its default first, then proposed batches until trials or time run out."""
    w: object                    # targets.tvm.tuning.Workload
    opts: TuneOptions
    env: dict
    scenario: str
    bind: dict
    runner: str
    database: dbmod.Database
    tmp: Path
    target_spec: dict
    link_objects: list
    tc: object                   # the target's toolchain: candidates link as artifacts do
    builders: object
    runners: object
    bar: _Bar
    say: Say
    reference: list | None = None

    def run(self, rng, start) -> WorkloadResult:
        w, opts = self.w, self.opts
        space = w.space
        measured: list[tuple[dict, float | None]] = []
        if opts.resume:
            for r in self.database.measured(w.key, self.env, self.scenario):
                measured.append((space.complete(r["params"]), r.get("time_us") if r["status"] == "ok" else None))
        default = space.default()
        resumed = next((t for p, t in measured if p == default), None)
        already = any(p == default for p, _ in measured)
        # the default runs first, always (resumed or not): its output is the reference to match
        self.reference = None
        ref_rec = self._candidates([default], record=not already)[0]
        if self.reference is None:
            self.bar.write(f"  {w.key}: the default schedule itself failed ({ref_rec.get('error', '')[:200]}); "
                           "skipped", self.say)
            return WorkloadResult(w.key, w.kernel, w.uses, w.bytes, w.ops, None, None, None, 1, 1)
        if not already:
            measured.append((default, ref_rec.get("time_us")))
        default_us = resumed or ref_rec.get("time_us")
        failed = 0
        while True:
            if opts.time_budget and time.monotonic() - start > opts.time_budget:
                break
            batch = propose(space, measured, opts.trials, max(1, opts.workers), rng)
            if not batch:
                break
            for p, rec in zip(batch, self._candidates(batch, record=True)):
                measured.append((p, rec.get("time_us") if rec["status"] == "ok" else None))
                failed += rec["status"] != "ok"
        ok = [(t, p) for p, t in measured if t is not None]
        best_us, best = min(ok, key=lambda tp: tp[0]) if ok else (None, None)
        gain = f"{default_us / best_us:.2f}x" if best_us and default_us else "-"
        self.bar.write(f"  {w.key[:90]}: default {default_us:.1f} us, best {best_us:.1f} us ({gain}) {best}"
                       if best_us else f"  {w.key[:90]}: no candidate ran", self.say)
        return WorkloadResult(w.key, w.kernel, w.uses, w.bytes, w.ops, default_us, best_us, best, len(measured),
                              failed)

    def _candidates(self, points: list[dict], record: bool) -> list[dict]:
        """Build `points` in parallel, then run each; returns their records (appended if `record`)."""
        from ..targets.tvm import tuning
        w = self.w
        futures = []
        for i, p in enumerate(points):
            kernel = w.kernel_for(p)
            lib = self.tmp / f"{w.kernel}_{abs(hash(repr(sorted(p.items()))))}_{i}.so"
            futures.append((p, lib, self.builders.submit(
                tuning.build_candidate, tuning.kernel_json(kernel), kernel.kind, kernel.panel, list(kernel.scalars), p,
                self.target_spec, self.link_objects, list(self.tc.driver), list(self.tc.libs), str(lib))))
        built = []
        for p, lib, fut in futures:     # every build of the batch ends before anything is timed:
            rec = self._record(p)       # a compiler running beside a measurement takes its cores
            try:
                rec["template"] = fut.result()
            except Exception as exc:       # the pool raises TimeoutError or the worker's exception
                rec.update(status="timeout" if isinstance(exc, TimeoutError) else "build-error",
                           error=_short(exc))
            built.append((p, lib, rec))
        out = []
        for p, lib, rec in built:
            if rec["status"] == "ok":
                self._run(p, lib, rec)
            if record:
                self.database.append(rec)
            if rec["status"] != "ok":
                self.bar.write(f"  rejected {w.key[:60]} {p}: {rec['status']}: {rec.get('error', '')[:160]}",
                               self.say)
            best = min((r["time_us"] for r in self.database.records if r["workload"] == w.key
                        and r["status"] == "ok" and r.get("scenario") == self.scenario), default=None)
            self.bar.step(f"{w.kernel}: best {best:.1f} us" if best else w.kernel)
            lib.unlink(missing_ok=True)
            out.append(rec)
        return out

    def _run(self, p: dict, lib: Path, rec: dict) -> None:
        from ..targets.tvm import tuning
        w, opts = self.w, self.opts
        arrays = w.arg_arrays(p, opts.seed)
        try:
            if self.runners is not None:
                res = self.runners.submit(tuning.local_measure, str(lib), w.kernel, arrays, w.outputs, opts.repeat,
                                          opts.min_repeat_ms).result()
            elif opts.ssh:
                res = _ssh_measure(opts, lib, w.kernel, arrays, w.outputs)
            else:
                res = tuning.rpc_measure(opts.rpc, opts.device_key, int(opts.run_timeout), str(lib), w.kernel, arrays,
                                         w.outputs, opts.repeat, opts.min_repeat_ms)
        except Exception as exc:
            rec.update(status="timeout" if isinstance(exc, TimeoutError) else "run-error",
                       error=_short(exc))
            return
        if self.reference is None:
            self.reference = res["outputs"]
        else:
            bad = _mismatch(self.reference, res["outputs"])
            if bad:
                rec.update(status="wrong", error=bad)
                return
        times = _robust(res["times_us"])
        rec.update(time_us=statistics.median(times), times_us=[round(t, 3) for t in res["times_us"]])

    def _record(self, p: dict) -> dict:
        w = self.w
        return {"workload": w.key, "cls": w.cls, "dims": w.dims, "family": w.family, "shape": w.shape,
                "params": w.space.complete(p), "status": "ok", **self.env, "runner": self.runner,
                "scenario": self.scenario, "bind": self.bind, "bytes": w.bytes, "ops": w.ops,
                "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "trial": sum(1 for r in self.database.records if r["workload"] == w.key)}


_DL_TYPES = {"i": 0, "u": 1, "f": 2, "b": 6}      # DLDataTypeCode by numpy kind (bool: kDLBool)


def _dl_type(a: np.ndarray) -> tuple[int, int]:
    if a.dtype.name == "bfloat16":
        return 4, 16
    return _DL_TYPES[a.dtype.kind], a.dtype.itemsize * 8


def _ssh_measure(opts: TuneOptions, lib: Path, name: str, arrays: list, outputs: list[int]) -> dict:
    """One candidate on a device over ssh (or adb shell): a tar of the candidate, the bench
    program and the inputs goes in on stdin, one JSON line comes back (qc_bench.c)."""
    import io
    import json
    import shlex
    import subprocess
    import tarfile
    written = {i % len(arrays) for i in outputs}
    spec, files = [], {"cand.so": lib.read_bytes(), "qc_bench": Path(opts.bench_program).read_bytes()}
    for i, a in enumerate(arrays):
        if isinstance(a, np.ndarray):
            code, bits = _dl_type(a)
            spec.append(f"t {code} {bits} {a.ndim} {' '.join(map(str, a.shape))} a{i}.bin {int(i in written)}")
            files[f"a{i}.bin"] = np.ascontiguousarray(a).tobytes()
        else:
            spec.append(f"s {int(a)}")
    files["spec.txt"] = ("\n".join(spec) + "\n").encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for fname, data in files.items():
            info = tarfile.TarInfo(fname)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    script = (f'd=$(mktemp -d) && cd "$d" && tar xf - && ./qc_bench ./cand.so {shlex.quote(name)} spec.txt '
              f'{opts.repeat} {opts.min_repeat_ms}; rc=$?; cd /; rm -rf "$d"; exit $rc')
    cmd = [*shlex.split(opts.ssh_command)] + ([] if opts.ssh == "-" else [opts.ssh]) + [script]
    try:
        proc = subprocess.run(cmd, input=buf.getvalue(), capture_output=True, timeout=opts.run_timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"no result from {opts.ssh} within {opts.run_timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"qc_bench on {opts.ssh} exited {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    got = {i: np.frombuffer(bytes.fromhex(h), arrays[i].dtype).reshape(arrays[i].shape)
           for i, h in zip(sorted(written), result["outputs"])}
    return {"times_us": result["times_us"], "outputs": [got[i % len(arrays)] for i in outputs]}


def _mismatch(ref: list, got: list) -> str | None:
    for i, (a, b) in enumerate(zip(ref, got)):
        a32, b32 = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a32.shape != b32.shape:
            return f"output {i}: shape {b32.shape}, expected {a32.shape}"
        scale = max(1.0, float(np.nanmax(np.abs(a32))) if a32.size else 1.0)
        if not np.allclose(b32, a32, rtol=1e-4, atol=1e-5 * scale, equal_nan=True):
            err = np.nanmax(np.abs(b32 - a32)) if a32.size else 0.0
            return f"output {i} differs from the default schedule's by up to {err:.3g} (max |y| {scale:.3g})"
    return None


def _short(exc: BaseException) -> str:
    """An exception from a worker as one line: the pool wraps the worker's traceback, whose last
    lines say what went wrong."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {' | '.join(lines[-2:])}"[:500] if lines else type(exc).__name__


def _robust(times: list[float]) -> list[float]:
    """Drop rounds far above the median (a preempted round), keep the rest."""
    med = statistics.median(times)
    mad = statistics.median(abs(t - med) for t in times) or med * 0.01
    return [t for t in times if t <= med + 5 * mad] or times
