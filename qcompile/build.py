"""`qcompile build`: model file in, self-contained library out. Phases, in order:

import -> passes -> plan (views, arena) -> kernels (TIR) -> compile (LLVM) -> executor (C) -> link.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import QCompileError
from .frontend import load
from .ir import dims
from .prepare import QuantOptions, check_options, prepare
from .targets.index_limits import table_limits
from .targets.lower_qlinear import lower_qlinear
from .targets.plan import make_plan
from .targets.presets import get_preset

DEFAULT_MAX_SEQ_LEN = 2048


@dataclass
class BuildOptions:
    target: str = "native"
    precision: str = "fp32"          # a policy: fp32 bf16 int8 int4 ternary mixed
    middle: str = "int4"
    group_size: int | None = None     # None: 128 where it divides K, else 64 or 32
    plan: Path | None = None         # per-layer overrides (TOML/JSON)
    rotate: bool = False             # fold norms and Hadamard-rotate the residual stream before quantizing
    calibrate: Path | None = None    # calibration inputs (.npz) or token ids (.npy/.txt)
    calib_seq: int = 512
    calib_samples: int = 16
    rounding: str = "rtn"            # rtn or gptq
    budget: float | None = None      # --precision auto: allowed relative output error
    bits: float = 4.5                # --precision mixed: mean bits per weight of the middle layers
    self_calibration: bool = True    # without --calibrate: random token ids weigh the int4 scale search
    activations: str = "int8"        # int8 (dynamic, per token) or int8-static (calibrated ranges)
    file_activations: bool = True    # imported QDQ layers use the file's static activation scales
    act_clip: str = "percentile"
    out_dir: Path = Path("out")
    name: str | None = None
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN
    dim_bounds: dict[str, int] = field(default_factory=dict)
    dump_ir: Path | None = None
    cc: str | None = None
    keep_temps: bool = False
    schedules: Path | None = None     # the schedule database's root (None: qcompile.tune.db.default_root())
    use_tuned: bool = True           # False: rule-based schedules only
    verify: bool = True              # run the test vectors on the built library where it runs here
    sanitize: str | None = None      # "address" or "thread": executor and runtime instrumented (debug builds)

    def quant(self) -> QuantOptions:
        import dataclasses
        return QuantOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(QuantOptions)
                               if f.name not in ("formats",)})


@dataclass
class BuildResult:
    library: Path
    header: Path
    manifest: Path
    kernels: int
    steps: int
    seconds: float
    phases: list[tuple[str, float]]
    finish: str | None = None     # a Metal build off a Mac: the command that makes `library` on one


Progress = Callable[[str, str], None]   # (phase, detail)


def default_bounds(graph, opts: BuildOptions) -> dict[str, int]:
    """Every symbolic input dim gets a bound: explicit --dim, batch-like dims 1, others max_seq_len."""
    bounds = {}
    for name in graph.inputs:
        for d in graph.values[name].shape or ():
            if isinstance(d, str) and dims.parse(d).is_symbol:
                bounds[d] = opts.dim_bounds.get(d, 1 if "batch" in d.lower() else opts.max_seq_len)
    unknown = set(opts.dim_bounds) - set(bounds)
    if unknown:
        raise QCompileError(f"--dim names unknown symbolic dims: {', '.join(sorted(unknown))}; "
                            f"the model has {', '.join(sorted(bounds)) or 'none'}", phase="options")
    return bounds


def build(model_path: str | Path, opts: BuildOptions, progress: Progress | None = None) -> BuildResult:
    from .artifact import codegen, toolchain
    from .targets.tvm.compile import compile_kernels, tvm_version
    from .targets.tvm.host import resolve

    from .passes.assign_precision import PrecisionConfig, load_plan
    quant = opts.quant()
    check_options(quant)                            # bad options fail here, first
    _check_bounds(opts)
    PrecisionConfig(opts.precision, opts.middle, opts.group_size, load_plan(opts.plan) if opts.plan else {})
    say = progress or (lambda phase, detail: None)
    preset = resolve(get_preset(opts.target))
    if preset.status == "planned":                  # no artifact path yet: say so before any work
        raise QCompileError(f"target {preset.name} ({preset.summary}) is planned but cannot be built yet",
                            phase="options", hint="`qcompile targets` lists each preset's status; the CPU "
                                                  "presets (native, x86_64, arm64, ...) build today")
    gpu = preset.gpu
    kind = preset.tvm_target["kind"]
    _check_sanitize(opts.sanitize, preset)
    if kind == "cuda":
        from .artifact import cuda as cuda_tools
        cuda_tools.nvcc()                           # a missing CUDA toolkit fails here too
    # a missing compiler fails here, before hours of work (Metal: build.sh compiles on a Mac)
    tc = None if kind == "metal" else toolchain.for_preset(preset, opts.cc)
    start = time.perf_counter()
    phases: list[tuple[str, float]] = []

    def phase(name):
        phases.append((name, time.perf_counter()))

    model_path = Path(model_path)
    name = opts.name or model_path.stem
    prefix = codegen.c_prefix(name)
    chooser = None if gpu else _chooser(preset, opts, say)     # GPU schedules are not tuned yet
    f = front(model_path, opts, preset, prefix, say, phase, tiles=_tiles_from(chooser))
    layers, qlinear, plan, kernels, dec, why_not = f.layers, f.qlinear, f.plan, f.kernels, f.decoder, f.why_not
    model_hash = _sha256(model_path)
    tuning = {} if gpu else _choose_schedules(plan, kernels, chooser, say)
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"qcompile_{prefix}_"))
    try:
        phase("compile")
        obj = tmp / "kernels.o"
        metal_module = None
        if kind == "metal":
            metal_module, schedules, device_record = _compile_metal(kernels, preset, plan.bounds, say)
        elif gpu:
            schedules, device_record = _compile_cuda(kernels, preset, plan.bounds, tmp, obj, say)
        else:
            device_record = None
            schedules = compile_kernels(kernels, preset, obj,
                                        progress=lambda i, n: say("compile", f"scheduling kernel {i}/{n}"),
                                        params={k: c["params"] for k, c in tuning.items()})
            say("compile", "LLVM done")
        phase("executor")
        src = codegen.generate(plan, prefix, name, preset.name, preset.cpu_features, model_hash, dec)
        (tmp / f"{prefix}.h").write_text(src.header)
        (tmp / f"{prefix}_config.h").write_text(src.config)
        (tmp / f"{prefix}_tables.h").write_text(src.tables)
        (tmp / f"{prefix}_exec.c").write_text(src.executor)
        (tmp / "weights.bin").write_bytes(src.weights)
        (tmp / "weights.S").write_text(codegen.weights_asm(prefix, tmp / "weights.bin", macho=tc is None or tc.macho))
        phase("link")
        finish = None
        library = out_dir / f"{prefix}{preset.shared_suffix}"
        if metal_module is not None:
            finish = _write_metal(metal_module, prefix, tmp, out_dir, say)
        else:
            _link(prefix, tmp, obj, qlinear, library, tc, gpu, say, opts.sanitize)
        self_test = _self_test(f, preset, library if finish is None and metal_module is None else None,
                               out_dir / f"{prefix}.testvectors.npz", opts.verify, say, opts.sanitize)
        header = out_dir / f"{prefix}.h"
        header.write_text(src.header)
        plan_record = {"layers": {name: fmt for name, _, fmt, _ in layers},
                       "why": {name: why for name, _, _, why in layers}}
        if f.prepared.mixed:
            plan_record["mixed"] = f.prepared.mixed
        (out_dir / f"{prefix}.plan.json").write_text(json.dumps(plan_record, indent=2) + "\n")
        manifest = out_dir / f"{prefix}.manifest.json"
        record = _manifest(plan, kernels, schedules, preset, name, prefix, model_hash, src.checksum, opts,
                           tvm_version(), tuning)
        record["model"]["path"] = str(model_path.resolve())      # where `qcompile verify` finds the reference
        record["precision"]["self_calibration"] = f.prepared.self_calibration
        record["precision"]["mixed"] = f.prepared.mixed
        record["schedule_database"] = {"files": [str(f) for f in chooser.files] if chooser else [],
                                       "warnings": chooser.warnings if chooser else []}
        record["quantized_layers"] = qlinear
        record["session"] = dec.manifest() if dec else {"available": False, "why": why_not}
        record["self_test"] = self_test
        if device_record:
            record[kind] = device_record
        manifest.write_text(json.dumps(record, indent=2) + "\n")
        if opts.keep_temps:
            keep = out_dir / f"{prefix}_build"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(tmp, keep)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    phases.append(("done", time.perf_counter()))
    timing = [(phases[i][0], phases[i + 1][1] - phases[i][1]) for i in range(len(phases) - 1)]
    return BuildResult(library, header, manifest, len(kernels), len(plan.steps), time.perf_counter() - start, timing,
                       finish)


SANITIZERS = {"address": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"],
              "thread": ["-fsanitize=thread"]}


def _check_bounds(opts: BuildOptions) -> None:
    """A dim bound below 1 leaves no input the library could take."""
    for flag, value in [("--max-seq-len", opts.max_seq_len)] + [(f"--dim {k}", v) for k, v in opts.dim_bounds.items()]:
        if not isinstance(value, int) or value < 1:
            raise QCompileError(f"{flag} must be a positive number of elements, got {value}", phase="options",
                                hint="it is the largest value the dim may take at run time (e.g. --max-seq-len 512)")


def _check_sanitize(sanitize: str | None, preset) -> None:
    if sanitize is None:
        return
    if sanitize not in SANITIZERS:
        raise QCompileError(f"--sanitize {sanitize}: unknown sanitizer; choose from {', '.join(SANITIZERS)}",
                            phase="options")
    if preset.gpu:
        raise QCompileError(f"--sanitize {sanitize} instruments the C executor of CPU libraries; target "
                            f"{preset.name} runs on a GPU", phase="options",
                            hint="CUDA: run the library under compute-sanitizer instead")


def _link(prefix: str, tmp: Path, obj: Path, qlinear, library: Path, tc, gpu: bool, say,
          sanitize: str | None = None) -> None:
    """The kernels' object, the executor, the C runtime and the weights -> one shared library.
    `sanitize` instruments the executor and runtime (TVM's kernels and the micro-kernels are not)."""
    from .artifact import cuda as cuda_tools, link
    from .artifact.runtime import RUNTIME_DIR, sources as runtime_sources
    for rt in runtime_sources():
        shutil.copy(rt, tmp / rt.name)
    shutil.copy(Path(runtime_sources()[0]).with_suffix(".h"), tmp / "qc_runtime.h")
    objects = [obj]
    if qlinear and not gpu:
        objects.append(link.compile_object(tmp / "qc_qlinear.o", RUNTIME_DIR / "qc_qlinear.c", tc))
    extra = dict(cflags=cuda_tools.executor_flags(), libs=cuda_tools.link_libs()) if gpu else {}
    if sanitize:
        extra = dict(cflags=[*SANITIZERS[sanitize], "-g", "-fno-omit-frame-pointer"])
    link.link_shared(library, objects, [tmp / f"{prefix}_exec.c", tmp / "qc_runtime.c"], [tmp / "weights.S"],
                     prefix, tc, **extra)
    say("link", f"{library} ({library.stat().st_size / 2**20:.1f} MiB)")


def _self_test(f, preset, library: Path | None, vectors: Path, verify: bool, say, sanitize: str | None = None) -> dict:
    """Writes the test vectors and, where the library runs here, checks it against them (a library
    that fails is removed). The manifest's `self_test` record."""
    from . import selftest
    from .ir.interpret import run
    phase_start = time.perf_counter()
    try:
        feeds = selftest.example_inputs(f.reference, f.plan.bounds)
        tolerance = 1e-3 if f.qlinear else 1e-4    # int8 rows: a rare rounding step apart from float64 sums
        expected = run(f.reference, feeds)
        conditioning = selftest.conditioning(f.reference, feeds, expected)
        act_error = selftest.activation_error(f.reference, feeds, expected)
        selftest.write(vectors, feeds, expected, tolerance, conditioning)
    except MemoryError:     # fixed dims too large for numpy here: the library itself is fine
        vectors.unlink(missing_ok=True)
        say("verify", "no test vectors: the reference interpreter's inputs do not fit in memory here")
        return {"vectors": None, "verified": False, "why_not": "the test inputs do not fit in memory here"}
    record = {"vectors": vectors.name, "inputs": {k: list(v.shape) for k, v in feeds.items()}, "verified": False,
              "conditioning": conditioning}
    if act_error is not None:
        record["int8_activation_error"] = act_error
        say("verify", "int8 activations move the outputs by " + ", ".join(f"{k} {v:.1e}" for k, v in act_error.items())
                      + " from the same weights with float activations")
    why = None
    if not verify:
        why = "--no-verify"
    elif library is None or not _runs_here(preset):
        why = "the library is built for another machine"
    elif sanitize:
        why = (f"{'an' if sanitize == 'address' else 'a'} {sanitize}-sanitized library loads only into a program "
               f"built with -fsanitize={sanitize}")
    if why:
        record["why_not"] = why
        where = ("on the device, or here under qemu-aarch64" if preset.tvm_target.get("mtriple", "").startswith("aarch64")
                 and preset.abi == "linux-gnu" else "on the device")
        say("verify", f"test vectors in {vectors.name}; not run here ({why}): `qcompile verify` runs them {where}")
        return record
    from .artifact.loader import ArtifactError, load
    hint = "this is a qcompile bug; please report it with the model (--no-verify keeps the library)"
    try:
        report = selftest.check(load(library), vectors, graph=f.reference)
    except ArtifactError as exc:
        library.unlink(missing_ok=True)
        raise selftest.VerifyError(f"the built library fails on its test vectors: {exc}; the library was removed",
                                   hint=hint) from None
    record.update(verified=report.ok, errors=report.errors, tolerance=report.tolerance)
    if report.steps is not None:
        name, node, err = report.steps.worst()
        record["kernels"] = {"values": len(report.steps.local), "largest_error": err, "at": name, "node": node}
    if not report.ok:
        library.unlink(missing_ok=True)
        raise selftest.VerifyError(f"the built library disagrees with the reference interpreter on its test vectors: "
                                   f"{report.render()}; the library was removed", hint=hint)
    how = ("the library matches the reference on its test vectors" if report.end_to_end_ok else
           "every kernel of the library matches the reference on its own inputs (the outputs end to end are "
           "within the reference's own int8-rounding sensitivity)")
    say("verify", f"{how}: {report.render()} ({time.perf_counter() - phase_start:.1f}s)")
    return record


def _runs_here(preset) -> bool:
    """A CPU library for this machine's architecture and features (cross builds run on the device)."""
    import platform

    from .targets.tvm.host import host_cpu_flags
    triple = preset.tvm_target.get("mtriple", platform.machine())
    return (preset.tvm_target["kind"] == "llvm" and preset.abi == "linux-gnu" and platform.system() == "Linux"
            and triple.split("-")[0] == platform.machine() and set(preset.cpu_features) <= host_cpu_flags())


def _say_schedules(rules: dict[str, str], kernels, say) -> None:
    """A GPU kernel that did not get the schedule meant for it is slow: say which and why."""
    for name, why in rules.items():
        if " (" not in why:
            continue
        rule, reason = why.split(" (", 1)
        what = "dlight's fallback schedule, one thread per output" if rule == "dlight.Fallback" else rule
        say("compile", f"{name} ({kernels[name].kind}) runs {what}: {reason[:-1]}")


def _compile_metal(kernels, preset, bounds, say):
    """TVM's MSL for every kernel and the launchers that dispatch it; (module, kernel -> schedule,
    the manifest's `metal` record)."""
    from .targets.tvm import metal
    say("compile", f"scheduling {len(kernels)} kernels for Metal (Apple GPU family 7+)")
    module = metal.lower(kernels, preset, bounds)
    _say_schedules(module.rules, kernels, say)
    say("compile", f"MSL: {len(module.kernels)} kernels")
    from .artifact.metal import MSL_STD
    record = {"msl": MSL_STD, "device_kernels": [{"name": k.name, "kernel": k.host, "launch": k.launch}
                                                              for k in module.kernels]}
    return module, dict(module.rules), record


def _write_metal(module, prefix: str, tmp: Path, out_dir: Path, say) -> str | None:
    """The Metal sources folder; built into the dylib where xcrun exists, else the command that
    builds it on a Mac (returned)."""
    from .artifact import metal as metal_artifact
    folder = out_dir / f"{prefix}_metal"
    shutil.rmtree(folder, ignore_errors=True)
    script = metal_artifact.write_folder(folder, prefix, module.source, module.host_source(), tmp)
    if metal_artifact.xcrun():
        metal_artifact.finish(script)
        say("link", f"{out_dir / (prefix + '.dylib')} (xcrun)")
        return None
    command = f"sh {script}"
    say("link", f"{folder}: Metal sources; Apple's Metal compiler runs only on macOS: finish there with `{command}`")
    return command


def _compile_cuda(kernels, preset, bounds, tmp: Path, obj: Path, say) -> tuple[dict[str, str], dict]:
    """Device kernels (TVM's CUDA C) and their host launchers in one .cu, compiled by nvcc;
    (kernel -> schedule, the manifest's `cuda` record: each device kernel's launch and registers)."""
    from .artifact import cuda as cuda_tools
    from .artifact.runtime import include_dirs
    from .targets.tvm import cuda
    say("compile", f"scheduling {len(kernels)} kernels for {preset.tvm_target['arch']}")
    module = cuda.lower(kernels, preset, bounds)
    _say_schedules(module.rules, kernels, say)
    source = tmp / "kernels.cu"
    source.write_text(module.artifact_source())
    reports = cuda_tools.compile_device(source, preset.tvm_target["arch"], obj, include_dirs())
    say("compile", f"nvcc: {len(reports)} device kernels, at most {max((r.registers for r in reports), default=0)} "
                   f"registers, no spills")
    registers = {r.kernel: r.registers for r in reports}
    device = {"arch": preset.tvm_target["arch"], "runtime": "cudart (static)",
              "device_kernels": [{"name": k.name, "kernel": k.host, "launch": k.launch, "threads": k.launch_bounds,
                                  "registers": registers.get(k.name)} for k in module.kernels]}
    return dict(module.rules), device


@dataclass
class Front:
    reference: object    # the prepared graph before lowering: what the reference interpreter runs
    graph: object
    layers: list
    qlinear: list[dict]
    plan: object
    kernels: dict
    decoder: object
    why_not: str | None
    prepared: object = None   # prepare.Prepared: self-calibration and mixed's choice, for the manifest


def front(model_path: Path, opts: BuildOptions, preset, prefix: str, say: Progress, phase=lambda name: None,
          tiles=None) -> Front:
    """The first half of a build, shared with `qcompile tune`: import, passes, quantization, packing
    (with `tiles` choosing panel widths), plan and kernels (TIR, unscheduled)."""
    from .artifact import decoder
    from .targets.tvm.kernels import build_kernels, check_coverage
    phase("import")
    say("import", str(model_path))
    graph = load(model_path)
    phase("passes")
    prepared = prepare(graph, opts.quant(), say)
    graph, layers = prepared.graph, prepared.layers
    reference = graph.copy()
    if preset.gpu:
        from .targets.lower_qlinear_gpu import lower_qlinear_gpu
        qlinear = lower_qlinear_gpu(graph)
    else:
        qlinear = lower_qlinear(graph, tiles=tiles)
    if qlinear:
        packed = sum(r["packed_bytes"] for r in qlinear)
        modes = sorted({r["activations"].split(" (")[0] for r in qlinear})
        say("precision", f"{len(qlinear)} layers packed ({qlinear[0]['layout']} layout, {packed / 2**20:.2f} MiB); "
                         f"activations quantized to {' and '.join(modes)} at run time")
    phase("plan")
    bounds = default_bounds(graph, opts)
    graph.dim_bounds.update(bounds)
    plan = make_plan(graph, bounds, simd_bits=512 if "avx512f" in preset.cpu_features else 256,
                     gpu=preset.gpu)
    say("plan", f"{len(plan.steps)} steps, arena {plan.arena_bytes / 2**20:.1f} MiB, weights "
                f"{plan.weight_bytes / 2**20:.1f} MiB")
    try:
        dec, why_not = decoder.detect(graph), None
        say("plan", f"decoder: a session API holds {len(dec.caches)} cache tensors of up to "
                    f"{bounds[dec.past]} tokens")
    except decoder.NotADecoder as exc:
        dec, why_not = None, str(exc)
    limits, unbounded = table_limits(graph, plan.symbolic)
    for lim in limits:
        if dims.upper_bound(lim.limit, bounds) > lim.most:
            say("plan", f"{lim.limit}: {lim.describe()}; the library refuses inputs that take it further")
    for node in unbounded:
        say("plan", f"warning: node {node} gathers at indices the graph computes, which qcompile cannot bound: "
                    "one past its table is clamped to the last row")
    phase("lower")
    check_coverage(plan, preset.name)
    kernels = build_kernels(plan, prefix)
    say("lower", f"{len(kernels)} kernels")
    return Front(reference, graph, layers, qlinear, plan, kernels, dec, why_not, prepared)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _signature(graph, names, bounds):
    out = []
    for n in names:
        v = graph.values[n]
        out.append({"name": n, "dtype": v.dtype.name, "shape": list(v.shape),
                    "max_shape": [dims.upper_bound(d, bounds) for d in v.shape]})
    return out


def _chooser(preset, opts: BuildOptions, say):
    """The schedule database for this build's target and machine (None with use_tuned off)."""
    if not opts.use_tuned:
        return None
    from .targets.tvm.compile import tvm_version
    from .tune import db, env
    chooser = db.Chooser(opts.schedules or db.default_root(), env.for_build(preset, tvm_version()))
    for w in chooser.warnings:
        say("schedules", f"warning: {w}")
    return chooser


def _tiles_from(chooser):
    """lower_qlinear's panel-width choice: a tuned record's, else the rule-based one."""
    if chooser is None:
        return None
    from .targets.qlinear_layout import tiles_for
    from .tune import keys
    from .tune.space import space_for

    def tiles(family, group, k, n, lead):
        key, cls, dm = keys.qlinear(family, group, k, n, lead)
        space = space_for("qlinear", {"N": n})
        choice = chooser.choose(key, cls, dm, space)
        return choice.params["tiles"] if choice.record else tiles_for(n)
    return tiles


def _choose_schedules(plan, kernels, chooser, say) -> dict[str, dict]:
    """kernel -> {params, source, workload, record}: what each kernel's schedule comes from."""
    from .targets.tvm.tuning import describe, kernel_steps
    first, _ = kernel_steps(plan)
    out, counts = {}, {}
    for name, kernel in kernels.items():
        w = describe(plan.graph, first[name], kernel) if name in first else None
        if w is None:
            continue
        choice = chooser.choose(w.key, w.cls, w.dims, w.space) if chooser else None
        source = choice.source if choice else "default"
        params = choice.params if choice else w.space.default()
        if w.qlinear:           # its layout was chosen (or not) when the weights were packed
            params = {"tiles": w.qlinear["tiles"]}
        out[name] = {"params": {} if w.qlinear else params, "source": source, "workload": w.key,
                     "chosen": params, "from": choice.describe() if choice else "default (tuning off)",
                     "record": {k: choice.record.get(k) for k in ("time_us", "device", "qcompile", "tvm", "runner",
                                                                  "workload")} if choice and choice.record else None}
        counts[source] = counts.get(source, 0) + 1
        if choice and choice.record:
            say("schedules", f"{name}: {w.key} -> {params}, {choice.describe()}")
    if out:
        say("schedules", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + " (of tunable kernels)")
    return out


def _manifest(plan, kernels, schedules, preset, name, prefix, model_hash, checksum, opts, tvm_ver,
              tuning=None) -> dict:
    g = plan.graph
    by_kernel: dict[str, list[str]] = {}
    op_of: dict[str, str] = {}
    for st in plan.steps:
        for k in filter(None, (st.kernel, st.tail_kernel)):
            by_kernel.setdefault(k, []).append(st.node.name)
            op_of[k] = st.node.op_id
    return {
        "format": "qcompile-artifact/1",
        "qcompile_version": __version__,
        "tvm_version": tvm_ver,
        "model": {"name": name, "sha256": model_hash},
        "symbol_prefix": prefix,
        "target": {"preset": preset.name, "tvm_target": preset.tvm_target, "cpu_features": list(preset.cpu_features),
                   "sanitize": opts.sanitize},
        "precision": {"policy": opts.precision, "plan_file": f"{prefix}.plan.json", "rotate": opts.rotate,
                      "rounding": opts.rounding, "budget": opts.budget, "bits": opts.bits,
                      "activations": opts.activations,
                      "file_activations": opts.file_activations,
                      "act_clip": opts.act_clip,
                      "calibration": {"file": str(Path(opts.calibrate).resolve()), "sha256": _sha256(opts.calibrate),
                                      "seq": opts.calib_seq, "samples": opts.calib_samples}
                      if opts.calibrate else None},
        "inputs": _signature(g, g.inputs, plan.bounds),
        "outputs": _signature(g, g.outputs, plan.bounds),
        "dim_bounds": plan.bounds,
        "arena_bytes": plan.arena_bytes,
        "weights": {"bytes": plan.weight_bytes, "checksum64": f"{checksum:016x}", "tensors": len(plan.weights)},
        "kernels": [{"name": k.name, "kind": k.kind, "schedule": schedules[k.name],
                     "op": op_of[k.name], "tuning": (tuning or {}).get(k.name),
                     "nodes": by_kernel.get(k.name, [])} for k in kernels.values()],
    }
