#!/usr/bin/env python3
"""Kernel benchmark: one linear layer y = x[M,K] @ W[K,N], qcompile artifacts against onnxruntime.

For each shape (K x N), M, thread count and cache state it times one call. Hot: the same instance
again and again. Cold (--cold rotate, the default): calls go round-robin over distinct copies of the
same layer (separate library files for qcompile, separate sessions for onnxruntime) whose weights add
up to at least --rotate-mib, so each call's weights come from DRAM while the Python, ctypes and
onnxruntime code paths stay warm, as in a real decode loop. --cold flush instead reads a large buffer
before each call; that also evicts the interpreter's own state and adds a few hundred µs to every
implementation alike.

  qcompile  fp32, int8 (per channel), int4 group 128 and 32, ternary   (timed as model(x=x))
  ORT       fp32 MatMul, MatMulNBits int4 block 128 and 32 (accuracy_level 4), dynamic int8 (per channel)

and prints one aligned table: median and min latency, the weight bytes each implementation streams,
GB/s (M=1) or GOP/s (M=64), the speedup of each qcompile row over the onnxruntime row of the same
precision family, and, for M=1 cold rows, how far the median is from the DRAM bound (weight bytes over
the measured single-thread read bandwidth). A benchmark, not a test: numbers depend on the machine.

  python tools/bench.py kernels --quick
  python tools/bench.py kernels --shapes 4096x4096 --m 1 --threads 1
  python tools/bench.py kernels --precisions fp32 int4-g128 --ort fp32 nbits128 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALL_SHAPES = [(2048, 2048), (2048, 5632), (5632, 2048), (4096, 4096), (4096, 11008)]
WARMUP = 3
SEED = 0

# ours: label -> (precision, group_size, ORT impl key it is compared with)
OURS = {
    "fp32": ("fp32", 128, "fp32"),
    "int8": ("int8", 128, "int8"),
    "int4-g128": ("int4", 128, "nbits128"),
    "int4-g32": ("int4", 32, "nbits32"),
    "ternary": ("ternary", 128, "nbits128"),
}
# ORT: key -> display name
ORT = {
    "fp32": "ort fp32 MatMul",
    "nbits128": "ort MatMulNBits b128 acc4",
    "nbits32": "ort MatMulNBits b32 acc4",
    "int8": "ort dynamic int8",
}


def log(msg: str) -> None:
    print(f"[bench_kernels {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class BuildFailed(Exception):
    """A build in the worker process failed; the message already names the original error."""


def one_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc) if isinstance(exc, BuildFailed) else f"{type(exc).__name__}: {exc}".replace("\n", " ").strip()
    return text if len(text) <= limit else text[:limit - 3] + "..."


# --------------------------------------------------------------------------------------------- machine

def cpu_info() -> dict:
    """CPU model name and the flags of interest, from the first processor in /proc/cpuinfo."""
    name, flags = None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and name is None:
                    name = value.strip()
                elif key == "flags" and flags is None:
                    flags = set(value.split())
                if name is not None and flags is not None:
                    break
    except OSError:
        pass
    interest = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"]
    return {"model": name or platform.processor() or "unknown", "cores": os.cpu_count(),
            "flags": {f: f in (flags or ()) for f in interest}}


class Flusher:
    """A buffer read with numpy to evict the caches; allocated and touched once."""

    def __init__(self, mib: int):
        self.buf = np.empty(mib * 2**20 // 8, np.uint64)
        self.buf.fill(1)             # really touch every page (np.zeros would map the shared zero page)
        self.sink = 0

    def flush(self) -> None:
        self.sink ^= int(np.add.reduce(self.buf))

    def bandwidth(self, tries: int = 3) -> float:
        """Single-thread read bandwidth in GB/s (1e9 bytes/s), best of `tries`."""
        best = float("inf")
        for _ in range(tries):
            t = time.perf_counter()
            self.flush()
            best = min(best, time.perf_counter() - t)
        return self.buf.nbytes / best / 1e9


def time_call(fns: list, cache: str, repeat: int, flusher: Flusher | None) -> list[float]:
    """Seconds per call: WARMUP untimed calls, then `repeat` timed ones. fns: one callable per copy of the
    layer; hot calls the first again and again, cold (rotate) goes round-robin over all of them, cold
    with a flusher flushes (untimed) before each call of the first."""
    cold = cache == "cold"
    rotate = fns if cold and flusher is None else fns[:1]
    calls = 0

    def call():
        nonlocal calls
        if cold and flusher is not None:
            flusher.flush()
        fn = rotate[calls % len(rotate)]
        calls += 1
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    for _ in range(WARMUP * len(rotate) if cold and flusher is None else WARMUP):
        call()
    return [call() for _ in range(repeat)]


def rotate_copies(weight_bytes: int, rotate_mib: int) -> int:
    """Copies of a layer whose weights together exceed rotate_mib (3 to 64)."""
    return max(3, min(64, -(-rotate_mib * 2**20 // max(weight_bytes, 1))))


def copy_artifact(lib: Path, dest: Path) -> Path:
    """The library and its manifest in another folder: another file, so its own page-cache pages."""
    import shutil
    dest.mkdir(parents=True, exist_ok=True)
    for f in lib.parent.glob(lib.stem + ".*"):
        if f.is_file():
            shutil.copy(f, dest / f.name)
    return dest / lib.name


# ---------------------------------------------------------------------------------------------- models

def make_matmul_onnx(path: Path, k: int, n: int) -> np.ndarray:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(SEED + k * 100003 + n).normal(0.0, 0.02, (k, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="linear")],
        f"linear_{k}x{n}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench_kernels")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w


def build_ours(onnx_path: Path, out_dir: Path, label: str, k: int, n: int) -> tuple[Path, int, dict]:
    """-> (library, weight bytes streamed, info for the JSON). Runs in the build worker process."""
    from qcompile.build import BuildOptions, build

    precision, group, _ = OURS[label]
    name = f"lin_{k}x{n}_{label.replace('-', '_')}"
    t = time.perf_counter()

    def progress(phase: str, detail: str) -> None:
        log(f"  build {k}x{n} {label}: {phase}: {detail}"[:240])

    result = build(onnx_path, BuildOptions(out_dir=out_dir, precision=precision, group_size=group,
                                           dim_bounds={"m": 64}, name=name), progress=progress)
    seconds = time.perf_counter() - t
    manifest = json.loads(Path(result.manifest).read_text())
    layers = manifest.get("quantized_layers") or []
    packed = [layer.get("packed_bytes") for layer in layers if layer.get("packed_bytes") is not None]
    wbytes = int(sum(packed)) if packed else k * n * 4
    info = {"library": str(result.library), "manifest": str(result.manifest), "build_s": round(seconds, 2),
            "kernels": result.kernels, "quantized_layers": layers,
            "weight_bytes_source": "packed_bytes" if packed else "K*N*4"}
    return Path(result.library), wbytes, info


def build_worker(spec_path: str) -> int:
    """Child-process entry: build one artifact, write {"library", "weight_bytes", "info"} or {"error"}."""
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("mem_bytes"):
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (spec["mem_bytes"], spec["mem_bytes"]))
    try:
        lib, wbytes, info = build_ours(Path(spec["onnx"]), Path(spec["out_dir"]), spec["label"], spec["K"], spec["N"])
        out = {"library": str(lib), "weight_bytes": wbytes, "info": info}
    except BaseException as exc:   # noqa: BLE001 - reported to the parent, which skips the row
        traceback.print_exc()
        out = {"error": one_line(exc, 2000)}
    Path(spec["result"]).write_text(json.dumps(out))
    return 0


def build_isolated(onnx_path: Path, out_dir: Path, label: str, k: int, n: int, timeout: float,
                   mem_bytes: int) -> tuple[Path, int, dict]:
    """build_ours in a child process, so that a build that runs out of memory or hangs costs one row."""
    import subprocess

    spec_path = out_dir / f"build_{label}.spec.json"
    result_path = out_dir / f"build_{label}.result.json"
    result_path.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({"onnx": str(onnx_path), "out_dir": str(out_dir), "label": label, "K": k, "N": n,
                                     "mem_bytes": mem_bytes, "result": str(result_path)}))
    # its own process group, so that a timeout also ends the compiler processes the build started
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--build-worker", str(spec_path)],
                            stdout=sys.stderr, start_new_session=True)
    try:
        proc.wait(timeout=timeout or None)
    except BaseException as exc:   # a timeout, or Ctrl-C: do not leave the build running
        import signal
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BuildFailed(f"build timed out after {timeout:.0f}s") from None
        raise
    if not result_path.exists():
        raise BuildFailed(f"build process died (exit status {proc.returncode}"
                           f"{', killed: out of memory?' if proc.returncode in (-9, 137) else ''})")
    out = json.loads(result_path.read_text())
    if "error" in out:
        raise BuildFailed(out["error"])
    return Path(out["library"]), int(out["weight_bytes"]), out["info"]


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def make_ort_model(kind: str, fp32_path: Path, out_dir: Path, k: int, n: int) -> tuple[Path, int]:
    """-> (ONNX file for onnxruntime, weight bytes streamed)."""
    import onnx

    if kind == "fp32":
        return fp32_path, k * n * 4
    if kind.startswith("nbits"):
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        block = int(kind[len("nbits"):])
        q = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), block_size=block, is_symmetric=True, accuracy_level=4)
        q.process()
        model = q.model.model
        ops = [node.op_type for node in model.graph.node]
        if "MatMulNBits" not in ops:
            raise RuntimeError(f"MatMulNBitsQuantizer produced {ops}, no MatMulNBits")
        path = out_dir / f"ort_{k}x{n}_{kind}.onnx"
        onnx.save(model, str(path))
        return path, k * n // 2 + (k // block) * n * 4
    if kind == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        path = out_dir / f"ort_{k}x{n}_dyn_int8.onnx"
        quantize_dynamic(str(fp32_path), str(path), weight_type=QuantType.QInt8, per_channel=True)
        return path, k * n + n * 4
    raise ValueError(kind)


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_ops(sess_path: Path) -> str:
    import onnx
    return ",".join(node.op_type for node in onnx.load(str(sess_path), load_external_data=False).graph.node)


# ------------------------------------------------------------------------------------------------ rows

@dataclass
class Row:
    K: int
    N: int
    M: int
    threads: int
    cache: str
    impl: str
    family: str                      # the ORT key this row belongs to / is compared with
    ours: bool
    weight_bytes: int
    median_us: float | None = None
    min_us: float | None = None
    gbps: float | None = None
    gops: float | None = None
    speedup: float | None = None     # ours only: ORT median / our median
    x_dram: float | None = None      # M=1 cold: median / (weight bytes / bandwidth)
    rel_err: float | None = None     # ||y - x@W|| / ||x@W||, fp64 reference
    error: str | None = None
    times_us: list[float] = field(default_factory=list)


def rel_error(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(y.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


def fill_derived(row: Row, bandwidth_gbs: float) -> None:
    if row.median_us is None:
        return
    sec = row.median_us * 1e-6
    if row.M == 1:
        row.gbps = row.weight_bytes / sec / 1e9
    else:
        row.gops = 2.0 * row.M * row.K * row.N / sec / 1e9
    if row.M == 1 and row.cache == "cold" and bandwidth_gbs > 0:
        row.x_dram = sec / (row.weight_bytes / (bandwidth_gbs * 1e9))


def fill_speedups(rows: list[Row]) -> None:
    ort_rows = {(r.K, r.N, r.M, r.threads, r.cache, r.family): r for r in rows if not r.ours}
    for r in rows:
        if not r.ours or r.median_us is None:
            continue
        ref = ort_rows.get((r.K, r.N, r.M, r.threads, r.cache, r.family))
        if ref is not None and ref.median_us is not None:
            r.speedup = ref.median_us / r.median_us


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(rows: list[Row]) -> str:
    headers = ["K x N", "M", "thr", "cache", "impl", "median µs", "min µs", "weight MB", "GB/s", "GOP/s",
               "speedup", "x DRAM", "rel err", "vs"]
    align = ["<", ">", ">", "<", "<", ">", ">", ">", ">", ">", ">", ">", ">", "<"]
    table = []
    for r in rows:
        vs = ORT[r.family].removeprefix("ort ") if r.ours else ""
        cells = [f"{r.K}x{r.N}", str(r.M), str(r.threads), r.cache, r.impl]
        if r.error:
            cells += ["-"] * 8 + [f"SKIPPED: {r.error}"]
        else:
            cells += [fmt(r.median_us, ".1f"), fmt(r.min_us, ".1f"), f"{r.weight_bytes / 1e6:.2f}",
                      fmt(r.gbps, ".1f"), fmt(r.gops, ".1f"),
                      fmt(r.speedup, ".2f") + ("x" if r.speedup is not None else ""),
                      fmt(r.x_dram, ".2f"), fmt(r.rel_err, ".1e"), vs]
        table.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in table)) if table else len(h) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])    # the last column is free text, not padded
    lines = ["  ".join(format(h, f"{a}{w}") for h, a, w in zip(headers, align, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    prev = None
    for r, cells in zip(rows, table):
        group = (r.K, r.N, r.M, r.threads, r.cache)
        if prev is not None and group != prev:
            lines.append("")
        prev = group
        if r.error:
            head = "  ".join(format(c, f"{a}{w}") for c, a, w in zip(cells[:5], align, widths))
            lines.append(f"{head}  {cells[-1]}")
        else:
            lines.append("  ".join(format(c, f"{a}{w}") for c, a, w in zip(cells, align, widths)).rstrip())
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main

def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        item = item.strip().lower()
        if not item:
            continue
        k, sep, n = item.partition("x")
        if not sep:
            raise argparse.ArgumentTypeError(f"shape '{item}' is not KxN")
        shapes.append((int(k), int(n)))
    return shapes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench.py kernels", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=parse_shapes, default=None,
                    help="comma-separated KxN (default: " + ",".join(f"{k}x{n}" for k, n in ALL_SHAPES) + ")")
    ap.add_argument("--m", type=int, nargs="+", default=None, help="rows of x (default: 1 64; at most 64)")
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default: 1 2)")
    ap.add_argument("--cache", nargs="+", choices=["hot", "cold"], default=None, help="default: hot cold")
    ap.add_argument("--repeat", type=int, default=None, help="timed calls (default: 20 hot, 10 cold)")
    ap.add_argument("--cold", choices=["rotate", "flush"], default="rotate",
                    help="how cold calls find their weights outside the caches (see above; default rotate)")
    ap.add_argument("--rotate-mib", type=int, default=256, help="cold rotate: total weight bytes of the copies")
    ap.add_argument("--flush-mib", type=int, default=1024,
                    help="size of the buffer read to measure bandwidth (and, with --cold flush, to evict caches)")
    ap.add_argument("--precisions", nargs="+", choices=list(OURS), default=list(OURS), help="qcompile rows")
    ap.add_argument("--ort", nargs="+", choices=list(ORT), default=list(ORT), help="onnxruntime rows")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2048x2048, M 1 64, threads 1, hot and cold, repeat 5 (explicit flags win)")
    ap.add_argument("--build-timeout", type=float, default=1800, help="seconds per build (0: none)")
    ap.add_argument("--build-mem-gib", type=float, default=None,
                    help="address-space limit of each build process, so that a runaway build fails alone "
                         "(default: half the memory available at start, 3 to 16; 0: none)")
    ap.add_argument("--build-worker", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="save every result (with raw times) to this file")
    ap.add_argument("--work", help="keep the ONNX files and artifacts here (default: a temporary folder)")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes = args.shapes or [(2048, 2048)]
        args.threads = args.threads or [1]
        args.repeat = args.repeat or 5
    args.shapes = args.shapes or list(ALL_SHAPES)
    args.m = args.m or [1, 64]
    args.threads = args.threads or [1, 2]
    args.cache = args.cache or ["hot", "cold"]
    if max(args.m) > 64:
        ap.error("--m: the artifacts are built with dim_bounds m=64")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--build-worker"]:
        return build_worker(argv[1])
    args = parse_args(argv)
    import onnxruntime as ort

    import qcompile

    cpu = cpu_info()
    log(f"allocating and touching the {args.flush_mib} MiB flush buffer")
    flusher = Flusher(args.flush_mib)
    bandwidth = flusher.bandwidth()
    flags = " ".join(f"{f}{'+' if on else '-'}" for f, on in cpu["flags"].items())
    header = (f"CPU: {cpu['model']} ({cpu['cores']} logical cores) | {flags} | "
              f"single-thread read bandwidth {bandwidth:.1f} GB/s (numpy sum of {args.flush_mib} MiB, best of 3) | "
              f"onnxruntime {ort.__version__} | qcompile {qcompile.__version__} | "
              f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print(header, flush=True)

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="qcompile_bench_kernels_"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"work folder: {work}{'' if args.work else ' (removed at the end; --work DIR keeps it)'}")
    try:
        return run(args, header, cpu, bandwidth, flusher, work)
    finally:
        if not args.work:
            import shutil
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, header: str, cpu: dict, bandwidth: float, flusher: Flusher, work: Path) -> int:
    import qcompile

    if args.build_mem_gib is None:
        mem_limit = max(min(int(mem_available() * 0.5), 16 * 2**30), 3 * 2**30)
    else:
        mem_limit = int(args.build_mem_gib * 2**30)
    log(f"each build runs in its own process, address space limited to "
        f"{f'{mem_limit / 2**30:.1f} GiB' if mem_limit else 'unlimited'}")
    repeats = {"hot": args.repeat or 20, "cold": args.repeat or 10}
    rows: list[Row] = []
    builds: dict = {}

    for k, n in args.shapes:
        shape_dir = work / f"{k}x{n}"
        shape_dir.mkdir(exist_ok=True)
        fp32_path = shape_dir / f"linear_{k}x{n}.onnx"
        log(f"{k}x{n}: writing the ONNX model")
        w = make_matmul_onnx(fp32_path, k, n)
        rng = np.random.default_rng(SEED + 7)
        xs = {m: rng.standard_normal((m, k)).astype(np.float32) for m in args.m}
        refs = {m: xs[m].astype(np.float64) @ w.astype(np.float64) for m in args.m}
        del w

        # (impl label, family, ours?) -> (path, weight bytes) or error string
        impls: list[tuple[str, str, bool, object, int, str | None]] = []
        for label in args.precisions:
            log(f"{k}x{n}: qcompile build {label}")
            try:
                lib, wbytes, info = build_isolated(fp32_path, shape_dir, label, k, n, args.build_timeout,
                                                   mem_limit)
                builds[f"{k}x{n} qc {label}"] = info
                log(f"{k}x{n}: qcompile build {label} done in {info['build_s']:.1f}s ({wbytes / 1e6:.2f} MB weights)")
                impls.append((f"qc {label}", OURS[label][2], True, lib, wbytes, None))
            except Exception as exc:   # noqa: BLE001 - one failed build must not end the run
                log(f"{k}x{n}: qcompile build {label} FAILED: {one_line(exc, 2000)}")
                builds[f"{k}x{n} qc {label}"] = {"error": one_line(exc, 2000)}
                impls.append((f"qc {label}", OURS[label][2], True, None, 0, f"build failed: {one_line(exc)}"))
        for kind in args.ort:
            log(f"{k}x{n}: onnxruntime model {ORT[kind]}")
            try:
                path, wbytes = make_ort_model(kind, fp32_path, shape_dir, k, n)
                builds[f"{k}x{n} {ORT[kind]}"] = {"path": str(path), "ops": ort_ops(path)}
                impls.append((ORT[kind], kind, False, path, wbytes, None))
            except Exception as exc:   # noqa: BLE001
                log(f"{k}x{n}: onnxruntime model {ORT[kind]} FAILED:\n{traceback.format_exc()}")
                impls.append((ORT[kind], kind, False, None, 0, f"quantization failed: {one_line(exc)}"))

        for threads in args.threads:
            # every implementation loaded at once, timed side by side per (M, cache), so that a change in
            # machine load hits neighbouring rows alike
            runners: dict[str, list] = {}
            errors: dict[str, str | None] = {}
            for impl, family, ours, path, wbytes, err in impls:
                errors[impl] = err
                if err is not None:
                    continue
                copies = rotate_copies(wbytes, args.rotate_mib) if "cold" in args.cache and args.cold == "rotate" else 1
                try:
                    runners[impl] = []
                    for c in range(copies):
                        if ours:
                            lib = path if c == 0 else copy_artifact(path, shape_dir / "rotate" / f"{impl}.{c}")
                            model = qcompile.load(lib, num_threads=threads)
                            runners[impl].append((lambda mdl: lambda x: next(iter(mdl(x=x).values())))(model))
                        else:
                            sess = ort_session(path, threads)
                            runners[impl].append((lambda s: lambda x: s.run(None, {"x": x})[0])(sess))
                except Exception as exc:   # noqa: BLE001
                    log(f"{k}x{n} {impl} threads {threads}: load FAILED: {one_line(exc, 2000)}")
                    errors[impl] = f"load failed: {one_line(exc)}"
            model = sess = None   # noqa: F841 - the runners hold them
            for m in args.m:
                x = xs[m]
                rels, errs_m = {}, dict(errors)
                for impl, *_ in impls:
                    if errs_m[impl] is not None:
                        continue
                    try:
                        y = runners[impl][0](x)
                        if y.shape != (m, n):
                            raise RuntimeError(f"output shape {y.shape}, expected {(m, n)}")
                        rels[impl] = rel_error(y, refs[m])
                    except Exception as exc:   # noqa: BLE001
                        log(f"{k}x{n} {impl} M={m} threads {threads}: run FAILED: {one_line(exc, 2000)}")
                        errs_m[impl] = f"run failed: {one_line(exc)}"
                for cache in args.cache:
                    log(f"{k}x{n} M={m} threads={threads} {cache}: timing {len(impls)} implementations")
                    for impl, family, ours, path, wbytes, err in impls:
                        row = Row(k, n, m, threads, cache, impl, family, ours, wbytes, rel_err=rels.get(impl),
                                  error=errs_m[impl])
                        if row.error is None:
                            try:
                                fns = [(lambda f, a: lambda: f(a))(r, x) for r in runners[impl]]
                                times = time_call(fns, cache, repeats[cache],
                                                  flusher if args.cold == "flush" else None)
                                row.times_us = [t * 1e6 for t in times]
                                row.median_us = statistics.median(row.times_us)
                                row.min_us = min(row.times_us)
                                fill_derived(row, bandwidth)
                            except Exception as exc:   # noqa: BLE001
                                row.error = f"timing failed: {one_line(exc)}"
                        rows.append(row)
            runners.clear()       # release this thread count's instances before loading the next

    # one table, grouped by (shape, M, threads, cache), ours first then ORT
    order = {(k, n): i for i, (k, n) in enumerate(args.shapes)}
    impl_order = [f"qc {label}" for label in args.precisions] + [ORT[kind] for kind in args.ort]
    rows.sort(key=lambda r: (order[(r.K, r.N)], args.m.index(r.M), args.threads.index(r.threads),
                             args.cache.index(r.cache), impl_order.index(r.impl)))
    fill_speedups(rows)
    print()
    print(render(rows))
    print()
    print(f"median/min: µs per call incl. the Python call (3 warmups; cold: {args.cold}). "
          "weight MB: bytes streamed (qc: manifest packed_bytes, else K*N*4). GB/s: weight bytes / median (M=1). "
          "GOP/s: 2*M*K*N / median (M=64). speedup: ORT median / qc median vs the 'vs' row. "
          "x DRAM: median / (weight bytes / measured bandwidth), M=1 cold. rel err: ||y - x@W|| / ||x@W||.")
    if args.json:
        record = {"header": header, "cpu": cpu, "bandwidth_gbs": bandwidth, "args": {
            k: v for k, v in vars(args).items() if k != "shapes"} | {"shapes": [f"{k}x{n}" for k, n in args.shapes]},
            "repeats": repeats, "warmup": WARMUP, "builds": builds, "rows": [asdict(r) for r in rows]}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
        log(f"results saved to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
