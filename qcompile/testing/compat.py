"""The compatibility matrix: every bundled model built for every target preset at every
precision, each library checked against its own test vectors where this machine can run it.

A cell is verified (the library ran on the vectors and matched the reference interpreter on the
graph as quantized: on this CPU, under qemu-aarch64, or on the CUDA or Metal CPU shim), built (a
library exists but nothing here runs it), refused (a qcompile error: the preset cannot take that
model at that precision, with the reason), no toolchain (the preset's compiler is not installed)
or failed (a bug: an unexpected exception, or a library that disagrees with the reference).

`tests/test_compatibility.py` runs it: the MLP in CI, checked against docs/compatibility.json;
QCOMPILE_COMPAT=full (or `python tools/compat.py`) runs every model and writes
docs/compatibility.md and docs/compatibility.json.
"""

from __future__ import annotations

import json
import platform
import shutil
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx

from ..errors import QCompileError

PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4", "ternary", "mixed")
STATUSES = ("verified", "built", "refused", "no toolchain", "failed")


def models() -> dict[str, tuple[onnx.ModelProto, dict, str]]:
    """name -> (model, build options, what it is)."""
    from ..zoo import LlamaConfig, make_bert, make_llama, make_mlp
    return {
        "mlp": (make_mlp(), dict(dim_bounds={"batch": 2}), "MLP: Gemm, Relu (x[batch, 64] -> y[batch, 10])"),
        "llama": (make_llama(LlamaConfig(), with_kv_cache=True), dict(max_seq_len=32),
                  "Llama-style decoder, KV-cache inputs: RMSNorm, RoPE, GQA attention, SwiGLU, tied LM head"),
        "bert": (make_bert(), dict(max_seq_len=32),
                 "BERT-style encoder: embeddings, LayerNorm, attention with a mask, GELU, pooler"),
    }


@dataclass
class Cell:
    model: str
    preset: str
    precision: str
    status: str
    error: float | None = None      # the largest relative error on the test vectors (verified cells)
    detail: str = ""                # why refused, failed or not run
    kernels: float | None = None    # judged kernel by kernel (ill-conditioned outputs): the largest error


# SmolLM2-135M (tools/export_model.py smollm2 --kv-cache): what users build, in the forms the
# issues name. precision label -> build options; the zero-point cells take a plan file (written
# into the work folder) and the rotated GPTQ cell calibration tokens, so both are filled in by
# real_variants().
REAL_PRESETS = ("native", "arm64", "arm64-i8mm", "arm64-v8")
REAL_DESCRIPTION = ("SmolLM2-135M-Instruct (30 layers, hidden 576, GQA 9/3 heads, tied LM head), exported by "
                    "`tools/export_model.py smollm2 --kv-cache`; `--max-seq-len 512`")


def real_variants(work: Path, calibration: Path | None) -> dict[str, tuple[dict, tuple[str, ...]]]:
    """label -> (build options, presets). int4 "g128" is the default choice: 128 where it divides K
    (SmolLM2's down_proj), else 64; zero points ("zp") apply to the linear layers."""
    plans = {}
    for g in (32, 64):
        plans[g] = work / f"int4_g{g}_zp.toml"
        plans[g].write_text(f'"node_linear*" = "int4-g{g}-asym"\n')
    v = {q: (dict(precision=q), REAL_PRESETS) for q in ("fp32", "bf16", "fp16", "int8")}
    v.update({f"int4 g{g}": (dict(precision="int4", group_size=g), REAL_PRESETS) for g in (32, 64)})
    v["int4 g128"] = (dict(precision="int4"), REAL_PRESETS)
    v.update({f"int4 g{g} zp": (dict(precision="int4", plan=plans[g]), REAL_PRESETS) for g in (32, 64)})
    v["ternary"] = (dict(precision="ternary"), REAL_PRESETS)
    v["mixed"] = (dict(precision="mixed"), REAL_PRESETS)
    v["mixed g32"] = (dict(precision="mixed", group_size=32), REAL_PRESETS)
    v["mixed ternary"] = (dict(precision="mixed", middle="ternary"), REAL_PRESETS)
    if calibration is not None:    # docs/accuracy.md's recommended build: 7 minutes, so on this CPU only
        v["rotated gptq"] = (dict(precision="mixed", rotate=True, calibrate=calibration, calib_seq=512,
                                  calib_samples=16, rounding="gptq"), ("native",))
    return v


def recorded_real(docs: Path) -> tuple[list[Cell] | None, str | None]:
    """The real-model cells docs/compatibility_real.json records (tools/compat.py --real), if any,
    and the machine they ran on."""
    path = docs / "compatibility_real.json"
    return (from_json(path.read_text()), host_of(path.read_text())) if path.exists() else (None, None)


def run_real(model: Path, work: Path, calibration: Path | None = None, progress=None) -> list[Cell]:
    """SmolLM2 at every real_variants() label on each of its presets."""
    jobs = [(label, p, opts) for label, (opts, ps) in real_variants(work, calibration).items() for p in ps]
    cells = []
    for i, (label, preset, opts) in enumerate(jobs):
        cells.append(check("smollm2", model, dict(max_seq_len=512, **opts), preset, label, work))
        if progress:
            progress(i + 1, len(jobs), cells[-1])
    return cells


def presets() -> list[str]:
    from ..targets.presets import PRESETS
    return [name for name, p in PRESETS.items() if p.status != "planned"]


def verifier(preset_name: str) -> str | None:
    """How this machine checks a library for `preset_name`; None: it only builds it."""
    from ..targets.presets import PRESETS
    from ..build import _runs_here
    from ..targets.tvm.host import resolve
    preset = resolve(PRESETS[preset_name])
    kind = preset.tvm_target["kind"]
    if kind == "cuda":
        return "CUDA-on-CPU shim" if shutil.which("nvcc") else None
    if kind == "metal":
        return "MSL type check + Metal-on-CPU shim"
    if _runs_here(preset):
        return "ran on this CPU (the build's self-test)"
    if preset.tvm_target.get("mtriple", "").startswith("aarch64") and shutil.which("qemu-aarch64"):
        from .device_run import qemu_cpu
        how = f"qemu-aarch64 -cpu {qemu_cpu(preset_name)}"
        return how + (", the glibc cross compiler standing in for the NDK" if preset.abi == "android" else "")
    return None


def check(model: str, path: Path, options: dict, preset_name: str, label: str, work: Path) -> Cell:
    """Build one cell, `label`, with the BuildOptions fields `options` (its precision among them)
    into `work` (removed after) and check it as verifier() says."""
    from ..artifact.toolchain import ToolchainError, ndk_clang
    from ..build import BuildOptions, build
    from ..targets.presets import PRESETS
    from . import device_run
    preset = PRESETS[preset_name]
    kind = preset.tvm_target["kind"]
    out = work / f"{model}-{preset_name}-{label.replace(' ', '_')}"
    opts = BuildOptions(target=preset_name, out_dir=out, name=model, keep_temps=kind == "cuda", **options)
    if preset.abi == "android" and ndk_clang() is None and shutil.which(device_run.AARCH64_CC):
        opts.cc = device_run.AARCH64_CC
    cell = Cell(model, preset_name, label, "built")
    try:
        try:
            result = build(path, opts)
        except ToolchainError as exc:
            cell.status, cell.detail = "no toolchain", str(exc.message).splitlines()[0]
            return cell
        except QCompileError as exc:     # a verify error here is the build's own self-test failing
            cell.status = "failed" if exc.phase == "verify" else "refused"
            cell.detail = f"[{exc.phase}] {str(exc.message).splitlines()[0]}"
            return cell
        manifest = json.loads(result.manifest.read_text())
        vectors = out / f"{model}.testvectors.npz"
        record = manifest["self_test"]
        if record["verified"]:
            cell.status, cell.error = "verified", max(record["errors"].values(), default=0.0)
            if cell.error > record["tolerance"]:       # judged kernel by kernel
                cell.kernels = record["kernels"]["largest_error"]
            return cell
        if verifier(preset_name) is None:
            cell.detail = "nothing here runs it"
            return cell
        if kind == "cuda":
            report = device_run.on_cuda_shim(out, model, vectors)
        elif kind == "metal":
            report = device_run.on_metal_shim(out, model, vectors)
        else:
            from ..api import reference_for
            report = device_run.under_qemu(result.library, vectors, cpu=device_run.qemu_cpu(preset_name),
                                           graph=reference_for(result.library, vectors))
        cell.error = max(report.errors.values(), default=0.0)
        if report.steps is not None and not report.end_to_end_ok:
            cell.kernels = report.steps.worst()[2]
        if report.ok:
            cell.status = "verified"
        else:
            cell.status, cell.detail = "failed", f"disagrees with the reference: {report.render()}"
    except Exception as exc:     # a bug, in the build or in running what it built: reported, not raised
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        cell.status = "failed"
        cell.detail = (f"[{exc.phase}] {str(exc.message).splitlines()[0]}" if isinstance(exc, QCompileError) else
                       f"{type(exc).__name__} at {Path(frame.filename).name}:{frame.lineno}: {str(exc)[:200]}")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return cell


def run(names: list[str], work: Path, progress=None) -> list[Cell]:
    """Every preset and precision for the models `names`; progress(i, n, cell) after each."""
    every = models()
    cells, jobs = [], [(m, p, q) for m in names for p in presets() for q in PRECISIONS]
    for m in names:
        onnx.save(every[m][0], str(work / f"{m}.onnx"))
    for i, (m, p, q) in enumerate(jobs):
        cells.append(check(m, work / f"{m}.onnx", dict(every[m][1], precision=q), p, q, work))
        if progress:
            progress(i + 1, len(jobs), cells[-1])
    return cells


def host() -> str:
    from ..targets.tvm.host import host_cpu_flags
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else \
        platform.processor()
    flags = host_cpu_flags()
    isa = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags)
    return f"{cpu} ({platform.machine()}: {isa or 'no x86 vector extensions'})"


def to_json(cells: list[Cell], machine: str | None = None) -> str:
    """The cells and the machine that ran them (host(): the CPU decides what runs here)."""
    return json.dumps({"host": machine or host(), "cells": [asdict(c) for c in cells]}, indent=1) + "\n"


def from_json(text: str) -> list[Cell]:
    data = json.loads(text)
    return [Cell(**c) for c in (data["cells"] if isinstance(data, dict) else data)]


def host_of(text: str) -> str | None:
    """The machine a matrix file was run on (None for one written before it was recorded)."""
    data = json.loads(text)
    return data.get("host") if isinstance(data, dict) else None


_MARK = {"verified": "✓", "built": "built", "refused": "refused", "no toolchain": "no toolchain", "failed": "✗ FAILED"}


def _mark(c: Cell, notes: dict[str, int]) -> str:
    text = _MARK[c.status]
    if c.status == "verified":
        text += f" {c.error:.0e}" if c.kernels is None else f" {c.kernels:.0e}ᵏ"
    if c.status in ("refused", "no toolchain", "failed"):
        text += f" [{notes.setdefault(c.detail, len(notes) + 1)}]"
    return text


def render(cells: list[Cell], version: str, real: list[Cell] | None = None, zoo_host: str | None = None,
           real_host: str | None = None) -> str:
    """docs/compatibility.md: how each preset is checked, then per model a preset x precision table
    (cells: ✓ and the largest relative error, or the status), with the reasons as notes; then the
    real model's table (`real`: run_real's cells), when there is one."""
    from ..targets.presets import PRESETS
    names = list(dict.fromkeys(c.model for c in cells))
    described = models()
    lines = ["# Compatibility matrix", "",
             "Generated by `tests/test_compatibility.py` with `QCOMPILE_COMPAT=full` (or `python tools/compat.py`);",
             "not written by hand. CI rebuilds the MLP's rows on every run and fails if they no longer",
             "match `docs/compatibility.json`.", "",
             f"qcompile {version}, on {zoo_host or host()}.", "",
             "Every cell is one `qcompile build` of a bundled model for one target preset at one precision,",
             "with default options. **✓** means the library ran its own test vectors (small inputs, and the",
             "reference interpreter's outputs on the graph as quantized) and matched; the number is the largest",
             "error relative to the largest reference value. **built**: the library exists, but nothing on",
             "this machine runs it. **refused**: qcompile declined with an error naming the reason (notes",
             "below). **✗ FAILED** would be a bug.", "",
             "## How each target is checked here", "",
             *([f"(On {host()}, which wrote this page; the bundled models' cells ran on {zoo_host}.)", ""]
               if zoo_host and zoo_host != host() else []),
             "| target | status | what it is | checked by |", "|---|---|---|---|"]
    for name in presets():
        p = PRESETS[name]
        lines.append(f"| `{name}` | {p.status} | {p.summary} | {verifier(name) or 'build only'} |")
    notes: dict[str, int] = {}
    for m in names:
        model_cells = [c for c in cells if c.model == m]
        counts = {s: sum(c.status == s for c in model_cells) for s in STATUSES}
        lines += ["", f"## {m}", "", described[m][2] + ".", "",
                  ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(model_cells)}.", "",
                  "| target | " + " | ".join(PRECISIONS) + " |", "|---" * (len(PRECISIONS) + 1) + "|"]
        for p in presets():
            row = [_mark(next(c for c in model_cells if c.preset == p and c.precision == q), notes)
                   for q in PRECISIONS]
            lines.append(f"| `{p}` | " + " | ".join(row) + " |")
    if real:
        labels = list(dict.fromkeys(c.precision for c in real))
        counts = {s: sum(c.status == s for c in real) for s in STATUSES}
        worst = max((c.error for c in real if c.kernels is not None), default=0.0)
        lines += ["", "## SmolLM2-135M (a real model)", "", REAL_DESCRIPTION + f"; on {real_host or host()}.", "",
                  ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" of {len(real)}.", "",
                  "**ᵏ**: judged kernel by kernel. SmolLM2's outlier channels make its outputs ill-conditioned under",
                  "int8 activation rounding: the reference's own outputs move past the tolerance when its rounded",
                  "activations are perturbed by 1e-6, so the build traces the library and checks every kernel on",
                  "the values the library itself computed before it (`selftest.check_steps`); the number is the",
                  f"largest such error. End to end those libraries were up to {worst:.1e} from the reference.", "",
                  "Columns: `int4 g128` is the default group choice (128 where it divides K: the down projections;",
                  "64 elsewhere); `zp`: int4 with zero points on the linear layers (a plan file); `mixed`: bf16",
                  "embeddings and LM head, int4 (or ternary) middle layers; `rotated gptq`: docs/accuracy.md's",
                  "recommended build (Hadamard rotation, GPTQ on 16 windows of the Lee corpus), on this CPU only.", "",
                  "| target | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        for p in dict.fromkeys(c.preset for c in real):
            row = []
            for q in labels:
                c = next((c for c in real if c.preset == p and c.precision == q), None)
                row.append("—" if c is None else _mark(c, notes))
            lines.append(f"| `{p}` | " + " | ".join(row) + " |")
    if notes:
        lines += ["", "## Notes", ""] + [f"{i}. {d}" for d, i in notes.items()]
    return "\n".join(lines) + "\n"


def disagreements(now: list[Cell], recorded: list[Cell]) -> list[str]:
    """Cells whose status differs from the recorded matrix. Verified and built count as the same:
    which one a cell gets depends on what the machine can run (another CPU, no qemu), and the test
    separately requires every cell this machine can run to be verified."""
    old = {(c.model, c.preset, c.precision): c for c in recorded}
    ran = ("verified", "built")
    out = []
    for c in now:
        r = old.get((c.model, c.preset, c.precision))
        if r is None:
            out.append(f"{c.model} {c.preset} {c.precision}: {c.status}, not in the recorded matrix")
        elif c.status != r.status and not (c.status in ran and r.status in ran):
            out.append(f"{c.model} {c.preset} {c.precision}: {c.status} ({c.detail}); recorded {r.status} ({r.detail})")
    return out
