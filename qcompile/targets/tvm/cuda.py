"""CUDA device code for a plan's kernels: GPU schedules, CUDA C from TVM, the launch metadata the
host side needs, and nvcc's verdict (compile only: no GPU is needed).

The first step of the CUDA target (issue 9). What exists: every non-extern kernel gets a GPU
schedule from TVM's dlight rules (GEMV, low-batch GEMV, GEMM, reductions), or dlight's fallback
(one thread per output element, recorded as such) where a rule does not apply; TVM emits CUDA C;
the device kernels' parameter order and launch dims are read from the lowered IR; nvcc compiles
the source for the preset's architecture with spills reported. Not yet: the host launcher, the
artifact, CUDA kernels for the packed quantized formats, and running kernels on a CPU shim.
"""

from __future__ import annotations

import importlib
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm.s_tir import dlight as dl

from ..plan import LoweringError
from .kernels import Kernel

MAX_THREADS_PER_BLOCK = 1024
MAX_SHARED_BYTES = 49152


@dataclass
class DeviceKernel:
    name: str                    # the __global__ function
    host: str                    # the kernel (PrimFunc) that launches it
    params: list[str]            # its parameters, in the order the launch passes them
    launch: list[str]            # launch dims: blockIdx.* then threadIdx.* (as TVM orders them)
    launch_bounds: int | None    # __launch_bounds__ in the source: the block's thread count


@dataclass
class CudaModule:
    source: str
    kernels: list[DeviceKernel]
    rules: dict[str, str] = field(default_factory=dict)    # kernel -> dlight rule applied


def target_for(preset) -> "tvm.target.Target":
    spec = dict(preset.tvm_target, max_shared_memory_per_block=MAX_SHARED_BYTES,
                max_threads_per_block=MAX_THREADS_PER_BLOCK, thread_warp_size=32, host={"kind": "llvm"})
    return tvm.target.Target(spec)


_RULES = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
          dl.gpu.Fallback()]


def schedule(kernels: dict[str, Kernel], target) -> tuple["tvm.IRModule", dict[str, str]]:
    """A GPU schedule per kernel; kernel -> which rule (the fallback is named, never silent)."""
    extern = sorted(k.name for k in kernels.values() if k.kind == "extern")
    if extern:
        raise LoweringError(f"{len(extern)} kernel(s) call CPU micro-kernels (quantized layers) and have no CUDA "
                            f"version yet: {', '.join(extern[:5])}", phase="lower",
                            hint="build fp32 or bf16 (--precision fp32) for the CUDA target for now")
    funcs, rules = {}, {}
    for k in kernels.values():
        one = tvm.IRModule({k.name: k.func})
        try:
            with target:
                funcs[k.name] = dl.ApplyDefaultSchedule(*_RULES)(one)[k.name]
            rules[k.name] = "dlight"
        except Exception as exc:     # a rule matched and then failed: keep the kernel, say so
            with target:
                funcs[k.name] = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(one)[k.name]
            rules[k.name] = f"dlight-fallback ({type(exc).__name__}: {str(exc).splitlines()[-1][:120]})"
    return tvm.IRModule(funcs), rules


def lower(kernels: dict[str, Kernel], preset) -> CudaModule:
    target = target_for(preset)
    module, rules = schedule(kernels, target)
    try:
        source = tvm.compile(module, target=target).mod.imports[0].inspect_source()
    except Exception as exc:
        raise LoweringError(f"TVM could not generate CUDA: {type(exc).__name__}: {str(exc)[:2000]}",
                            phase="compile") from exc
    return CudaModule(source, device_kernels(module, target, launch_bounds(source)), rules)


def launch_bounds(source: str) -> dict[str, int]:
    """__global__ function -> its __launch_bounds__ in TVM's CUDA C."""
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"__launch_bounds__\((\d+)\)\s+(\w+)\s*\(", source)}


def device_kernels(module, target, bounds: dict[str, int]) -> list[DeviceKernel]:
    """Parameter order and launch dims, from the lowered IR (the runtime module does not keep
    them; TVM orders a kernel's parameters by name, not as the PrimFunc does)."""
    build = importlib.import_module("tvm.tirx.build")
    pipeline, _, finalize_device = tvm.tirx.get_default_tir_pipeline(target)
    lowered = pipeline(tvm.tirx.transform.BindTarget(target)(module))
    _, devices = build.split_host_device_mods(lowered)
    out = []
    for device_mod in devices.values():
        for gv, fn in finalize_device()(device_mod).functions.items():
            name = gv.name_hint
            launch = re.findall(r"\w+\.\w", str(fn.attrs["tirx.kernel_launch_params"]))
            out.append(DeviceKernel(name, name.rsplit("_kernel", 1)[0], [p.name for p in fn.params], launch,
                                    bounds.get(name)))
    return sorted(out, key=lambda k: k.name)


def check_launches(kernels: list[DeviceKernel], max_threads: int = MAX_THREADS_PER_BLOCK) -> None:
    """A block larger than the GPU allows compiles without complaint and fails only at launch."""
    bad = [f"{k.name} ({k.launch_bounds} threads)" for k in kernels
           if k.launch_bounds is not None and not 0 < k.launch_bounds <= max_threads]
    if bad:
        raise LoweringError(f"kernel(s) launch more than {max_threads} threads per block: {', '.join(bad)}",
                            phase="schedule", hint="this is a qcompile schedule bug; please report it")


@dataclass
class PtxasReport:
    kernel: str
    registers: int
    spill_bytes: int


def nvcc_compile(source: str, arch: str, out: Path, nvcc: str = "nvcc") -> list[PtxasReport]:
    """Compile to a cubin for `arch`; ptxas' register and spill report per kernel. Fails on any
    error and on any spill (a spill in a decode GEMV costs more than the kernel saves)."""
    out = Path(out)
    src = out.with_suffix(".cu")
    src.write_text(source)
    cmd = [nvcc, f"-arch={arch}", "-cubin", "-Xptxas", "-v", "-Xptxas", "--warn-on-spills", str(src), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LoweringError(f"nvcc -arch={arch} failed (exit {proc.returncode}):\n{proc.stderr.strip()[-3000:]}",
                            phase="compile", hint="this is a qcompile bug; please report it")
    reports, current = [], None
    for line in proc.stderr.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            current = m.group(1)
        elif current and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            spill = int(m.group(1)) + int(m.group(2))
            reports.append(PtxasReport(current, 0, spill))
        elif current and reports and (m := re.search(r"Used (\d+) registers", line)):
            reports[-1].registers = int(m.group(1))
    spilled = [f"{r.kernel} ({r.spill_bytes} B)" for r in reports if r.spill_bytes]
    if spilled:
        raise LoweringError(f"register spills for {arch}: {', '.join(spilled)}", phase="compile",
                            hint="a schedule keeps too much in registers; this is a qcompile bug")
    return reports
