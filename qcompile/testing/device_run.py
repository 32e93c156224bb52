"""A build's test vectors on libraries this machine cannot load into Python.

aarch64 libraries run under qemu-user through vector_runner.c (inputs and outputs as files);
CUDA and Metal libraries run on the CPU shims (their kernels compiled for the host). Each returns
the self-test's Report: the largest relative error per output against the reference interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..errors import QCompileError
from ..selftest import Report, check_steps, compare, read_meta

RUNNER = Path(__file__).with_name("vector_runner.c")
AARCH64_CC, QEMU, AARCH64_SYSROOT = "aarch64-linux-gnu-gcc", "qemu-aarch64", "/usr/aarch64-linux-gnu"


class DeviceRunError(QCompileError):
    phase = "verify"


def qemu_cpu(preset_name: str | None) -> str:
    """The qemu-aarch64 CPU model a preset's library runs on: ARMv8.0 without dotprod for arm64-v8."""
    return "cortex-a72" if preset_name == "arm64-v8" else "max"


def on_host(library: Path, vectors: Path) -> Report:
    """A library (or a shim-linked one) that loads here, run in a child process: a shim that
    aborts on a broken kernel must not take the caller with it, and each shim library keeps its
    fibers' stacks mapped for the life of the process (thousands of mappings per library)."""
    proc = subprocess.run([sys.executable, "-m", __name__, str(library), str(vectors)], capture_output=True,
                          text=True, timeout=900)
    if proc.returncode:
        raise DeviceRunError(f"running {Path(library).name} on its test vectors failed (exit {proc.returncode}):\n"
                             f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    errors, tolerance = json.loads(proc.stdout.strip().splitlines()[-1])
    return Report(errors, tolerance)


def under_qemu(library: Path, vectors: Path, cpu: str = "max", cc: str = AARCH64_CC, graph=None) -> Report:
    """An aarch64 Linux library: vector_runner.c cross-compiled against it, run by qemu-aarch64
    with `cpu` (cortex-a72 for ARMv8.0 without dotprod, max for everything). With the reference
    graph, the run is traced and judged kernel by kernel too (selftest.check_steps)."""
    from ..artifact.loader import _prefix_of
    library = Path(library).resolve()
    prefix = _prefix_of(library)
    feeds, expected, meta = read_meta(vectors)
    with tempfile.TemporaryDirectory(prefix="qc_qemu_") as tmp:
        tmp = Path(tmp)
        exe = tmp / "run_vectors"
        cmd = [cc, "-O1", "-std=c11", f"-DQC_NAME={prefix}", str(RUNNER), f"-I{library.parent}",
               f"-L{library.parent}", f"-l:{library.name}", f"-Wl,-rpath,{library.parent}", "-o", str(exe)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise DeviceRunError(f"compiling the vector runner against {library.name} failed:\n{proc.stderr[-3000:]}")
        for i, arr in enumerate(feeds.values()):     # the npz keeps the inputs in the model's order
            (tmp / f"in{i}.dims").write_text(" ".join(map(str, (arr.ndim, *arr.shape))))
            (tmp / f"in{i}.bin").write_bytes(np.ascontiguousarray(arr).tobytes())
        proc = subprocess.run([QEMU, "-cpu", cpu, "-L", AARCH64_SYSROOT, str(exe), str(tmp)] +
                              (["--trace"] if graph is not None else []), capture_output=True, text=True, timeout=900)
        if proc.returncode:
            raise DeviceRunError(f"{library.name} under qemu-aarch64 -cpu {cpu}: {proc.stderr.strip()[-2000:]}")
        got = {}
        for o, (name, want) in enumerate(expected.items()):
            ndim, *shape = map(int, (tmp / f"out{o}.dims").read_text().split())
            got[name] = np.frombuffer((tmp / f"out{o}.bin").read_bytes(), want.dtype).reshape(shape[:ndim])
        report = compare(got, expected, meta["tolerance"], meta.get("conditioning", 0.0))
        if graph is not None:
            report.steps = check_steps(graph, feeds, read_trace(tmp / "trace.bin"), meta["tolerance"])
    return report


def read_trace(path: Path) -> list:
    """vector_runner.c's trace.bin -> loader.StepRecord list (the format is in vector_runner.c)."""
    import struct

    from ..artifact.loader import _NP_OF_ONNX, StepRecord
    data, pos = Path(path).read_bytes(), 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    def string() -> str:
        nonlocal pos
        (n,) = take("<i")
        pos += n
        return data[pos - n:pos].decode()

    records = []
    while pos < len(data):
        step, after = take("<2i")
        node = string()
        (count,) = take("<i")
        if not after:
            records.append(StepRecord(step, node, {}, {}))
        side = records[-1].writes if after else records[-1].reads
        for _ in range(count):
            name = string()
            dtype, ndim = take("<2i")
            shape = take(f"<{ndim}q")
            (nbytes,) = take("<q")
            raw, pos = data[pos:pos + nbytes], pos + nbytes
            if dtype in _NP_OF_ONNX:
                side[name] = np.frombuffer(raw, _NP_OF_ONNX[dtype]).reshape(shape).copy()
    return records


def on_cuda_shim(out_dir: Path, prefix: str, vectors: Path) -> Report:
    """A CUDA build made with keep_temps: its kernels linked to run on the CPU."""
    from .cuda_cpu import link_on_cpu
    with tempfile.TemporaryDirectory(prefix="qc_cuda_run_") as tmp:
        return on_host(link_on_cpu(Path(out_dir) / f"{prefix}_build", prefix, Path(tmp) / f"{prefix}.so"), vectors)


def on_metal_shim(out_dir: Path, prefix: str, vectors: Path) -> Report:
    """A Metal build: its MSL type-checked, then run on the CPU."""
    from .metal_cpu import link_on_cpu, typecheck
    folder = Path(out_dir) / f"{prefix}_metal"
    typecheck(folder / "kernels.metal")
    with tempfile.TemporaryDirectory(prefix="qc_metal_run_") as tmp:
        return on_host(link_on_cpu(folder, prefix, Path(tmp) / f"{prefix}.so"), vectors)


if __name__ == "__main__":      # on_host's child: LIBRARY VECTORS -> [errors, tolerance] as JSON
    from ..artifact.loader import load
    from ..selftest import check
    report = check(load(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps([report.errors, report.tolerance]))
