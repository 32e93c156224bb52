"""The Python API; the CLI only parses arguments and calls these functions."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from .errors import QCompileError
from .frontend import onnx as onnx_frontend
from .ir import dtypes
from .ir.graph import Graph
from .ir.printer import format_shape
from .passes import PipelineReport, run_pipeline


def load(path: str | os.PathLike, dim_bounds: dict[str, int] | None = None) -> Graph:
    """ONNX file -> IR graph (checked, shapes inferred, coverage verified)."""
    return onnx_frontend.load(path, dim_bounds)


def optimize(graph: Graph, pipeline: str = "default", dump_ir: str | os.PathLike | None = None,
             verify_each: bool | None = None) -> tuple[Graph, PipelineReport]:
    """Run a named pass pipeline over a graph."""
    return run_pipeline(graph, pipeline, dump_ir=dump_ir, verify_each=verify_each)


@dataclass
class TensorInfo:
    name: str
    dtype: str
    shape: tuple

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype}{format_shape(self.shape)}"


@dataclass
class Inspection:
    path: str
    file_bytes: int
    ir_version: int
    producer: str
    opsets: dict[str, int]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    op_histogram: dict[str, int]
    param_count: int
    param_bytes: int
    params_by_dtype: dict[str, int]
    unsupported: dict[str, list[str]]
    graph: Graph | None = None
    ir_error: str | None = None
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        opsets = ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(self.opsets.items()))
        lines = [f"model    {self.path} ({_human_bytes(self.file_bytes)})",
                 f"format   ONNX IR v{self.ir_version}, opset {opsets}" +
                 (f", producer {self.producer}" if self.producer else "")]
        width = max((len(t.name) for t in self.inputs + self.outputs), default=0)
        for label, items in (("inputs", self.inputs), ("outputs", self.outputs)):
            for i, t in enumerate(items):
                head = label if i == 0 else ""
                lines.append(f"{head:<8} {t.name:<{width}}  {t.dtype}{format_shape(t.shape)}")
        by_dtype = ", ".join(f"{k} {v:,}" for k, v in self.params_by_dtype.items())
        lines.append(f"params   {self.param_count:,} ({_human_bytes(self.param_bytes)}" +
                     (f"; {by_dtype})" if by_dtype else ")"))
        n_nodes = sum(self.op_histogram.values())
        status = "all supported" if not self.unsupported else f"{len(self.unsupported)} unsupported"
        lines.append(f"ops      {n_nodes} nodes, {len(self.op_histogram)} op types, {status}")
        for op, count in self.op_histogram.items():
            mark = "  UNSUPPORTED" if op in self.unsupported else ""
            lines.append(f"  {count:6d}  {op}{mark}")
        if self.unsupported:
            lines.append("unsupported ops (with their nodes):")
            for op, names in self.unsupported.items():
                shown = ", ".join(names[:5]) + (f", ... ({len(names)} nodes)" if len(names) > 5 else "")
                lines.append(f"  {op}: {shown}")
        if self.ir_error:
            lines.append(f"IR       not built: {self.ir_error}")
        lines.extend(self.notes)
        return "\n".join(lines)


def inspect(path: str | os.PathLike, build_ir: bool = True) -> Inspection:
    """Summarize an ONNX file; unsupported ops are listed, not raised."""
    model = onnx_frontend.load_proto(path)
    g = model.graph
    init_names = {t.name for t in g.initializer}
    counts: Counter[str] = Counter(onnx_frontend.op_id_of(n) for n in g.node)
    by_dtype: Counter[str] = Counter()
    param_bytes = 0
    for t in g.initializer:
        size = 1
        for d in t.dims:
            size *= d
        dt = dtypes.BY_ONNX.get(t.data_type)
        name = dt.name if dt else onnx.TensorProto.DataType.Name(t.data_type).lower()
        by_dtype[name] += size
        param_bytes += size * (dt.bits if dt else 32) // 8
    unsupported = onnx_frontend.find_unsupported(g)
    result = Inspection(
        path=str(path), file_bytes=Path(path).stat().st_size, ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        opsets={imp.domain: imp.version for imp in model.opset_import},
        inputs=[_tensor_info(v) for v in g.input if v.name not in init_names],
        outputs=[_tensor_info(v) for v in g.output],
        op_histogram=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        param_count=sum(by_dtype.values()), param_bytes=param_bytes,
        params_by_dtype=dict(by_dtype.most_common()), unsupported=unsupported)
    if build_ir and not unsupported:
        try:
            result.graph = onnx_frontend.from_proto(model, name=Path(path).stem)
        except QCompileError as exc:
            result.ir_error = str(exc)
    return result


def _tensor_info(v: onnx.ValueInfoProto) -> TensorInfo:
    code = v.type.tensor_type.elem_type
    dt = dtypes.BY_ONNX.get(code)
    return TensorInfo(v.name, dt.name if dt else onnx.TensorProto.DataType.Name(code).lower(),
                      onnx_frontend.shape_of(v.type))


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass
class Comparison:
    library: str
    settings: dict
    layers: list                       # evaluate.LayerComparison, quantized reference vs float twin
    outputs: list                      # (output, vs float, vs quantized reference) comparisons

    def render(self) -> str:
        from .evaluate import LayerComparison
        width = max((len(r.name) for r in self.layers), default=5)
        lines = [f"library  {self.library}", "settings " + ", ".join(f"{k} {v}" for k, v in self.settings.items()),
                 "", "per layer: the quantized graph (reference interpreter) against the float graph, errors "
                 "accumulated up to each layer", f"{'layer':<{width}}  {'format':<14} {'SNR dB':>6}  {'cosine':>9}  "
                 f"{'max error':>10}"]
        lines += [LayerComparison(r.name.ljust(width), r.format, r.snr_db, r.cosine, r.max_error).row()
                  for r in self.layers]
        lines += ["", "outputs of the library:"]
        for name, vs_float, vs_reference in self.outputs:
            lines.append(f"  {name}: vs float SNR {vs_float[0]:.1f} dB, cosine {vs_float[1]:.6f}, max error "
                         f"{vs_float[2]:.4g}; vs the quantized reference max error {vs_reference[2]:.3g}")
        return "\n".join(lines)


def replay(library: str | os.PathLike, model: str | os.PathLike | None = None, phase: str = "verify"):
    """The graph a library was built from, quantized as it was: its manifest's options and plan
    replayed on the model (by default the file the manifest names, if it is still there with the
    same hash). Returns (graph, manifest, formats): what the reference interpreter checks it with."""
    import json

    from .build import _sha256
    from .prepare import QuantOptions, prepare
    library = Path(library)
    manifest_path = library.with_name(library.stem + ".manifest.json")
    try:
        manifest = json.loads(manifest_path.read_text())
        formats = json.loads(manifest_path.with_name(manifest["precision"]["plan_file"]).read_text())
        formats = formats.get("layers", formats)
    except (OSError, KeyError, ValueError) as exc:
        raise QCompileError(f"cannot read the manifest and plan of '{library}': {exc}", phase=phase,
                            hint="this needs a library built by `qcompile build`, beside its "
                                 "NAME.manifest.json and NAME.plan.json") from None
    recorded = manifest["model"].get("path")
    model = Path(model or recorded or "")
    if not model.is_file():
        raise QCompileError(f"the model '{library.name}' was built from is not at '{model}'", phase=phase,
                            hint="pass the model file with --model")
    if _sha256(model) != manifest["model"]["sha256"]:
        raise QCompileError(f"'{model}' is not the model '{library.name}' was built from (its sha256 differs from "
                            "the manifest's)", phase=phase, hint="pass the model file it was built from")
    p = manifest["precision"]
    calib = p.get("calibration") or {}
    quant = QuantOptions(formats=formats, rotate=p.get("rotate", False), rounding=p.get("rounding", "rtn"),
                         activations=p.get("activations", "int8"), act_clip=p.get("act_clip", "percentile"),
                         file_activations=p.get("file_activations", True),
                         self_calibration=p.get("self_calibration") is not None)
    if calib.get("file"):       # GPTQ, static ranges and the int4 scale search depend on the calibration data
        path = Path(calib.get("file", ""))
        if not path.is_file() or _sha256(path) != calib.get("sha256"):
            raise QCompileError(f"the library was calibrated on '{path}', which is gone or has changed, so "
                                "its quantization cannot be replayed", phase=phase)
        quant.calibrate, quant.calib_seq, quant.calib_samples = path, calib["seq"], calib["samples"]
    return prepare(load(model), quant).graph, manifest, formats


def reference_for(library: str | os.PathLike, vectors: str | os.PathLike, model: str | os.PathLike | None = None,
                  note=None):
    """The replayed reference graph to judge a library kernel by kernel: with `model` always, else
    only where its test vectors say the end-to-end comparison cannot judge (selftest.conditioning)
    and the model is still where it was built (otherwise None, and `note(message)` says why)."""
    from .selftest import read_meta
    if model is None:
        meta = read_meta(Path(vectors))[2]
        if meta.get("conditioning", 0.0) <= meta["tolerance"]:
            return None
        try:
            return replay(library)[0]
        except QCompileError as exc:
            if note:
                note(f"{exc}; judging end to end only")
            return None
    return replay(library, model)[0]


def compare(library: str | os.PathLike, model: str | os.PathLike, data: str | os.PathLike,
            seq_len: int = 64) -> Comparison:
    """A built library against its source model: the same quantization replayed from the library's
    manifest and plan, run per layer in the reference interpreter, and the library's outputs."""
    from .artifact.loader import load as load_library
    from .calibration import load_samples
    from .evaluate import compare_arrays, compare_layers
    from .prepare import QuantOptions, prepare
    quantized, manifest, formats = replay(library, model, phase="compare")
    library = Path(library)
    p = manifest["precision"]
    settings = {"precision": p["policy"], "rotate": p.get("rotate", False), "rounding": p.get("rounding", "rtn"),
                "activations": p.get("activations", "int8")}
    twin = prepare(load(model), QuantOptions(rotate=settings["rotate"])).graph
    feeds = load_samples(data, quantized, seq_len, max_samples=1)[0]
    layers = compare_layers(twin, quantized, feeds, formats)
    from .ir import interpret
    ref_float, ref_quant = interpret.run(twin, feeds), interpret.run(quantized, feeds)
    outs = load_library(library)(**{k: v for k, v in feeds.items()})
    rows = [(name, compare_arrays(ref_float[name], outs[name]), compare_arrays(ref_quant[name], outs[name]))
            for name in quantized.outputs if name in outs]
    return Comparison(str(library), settings, [r for r in layers if not r.name.startswith("output ")], rows)
