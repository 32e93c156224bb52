"""CUDA device code for a plan's kernels: GPU schedules, CUDA C from TVM, the launch metadata the
host side needs, and nvcc's verdict (compile only: no GPU is needed).

Every kernel gets qcompile's own GPU schedule where dlight has none that fits (attention,
quantized layers, their row quantization: cuda_attention.py, cuda_qlinear.py), else the first
dlight rule that applies (Matmul, GEMV, low-batch GEMV, reductions), else dlight's fallback (one
thread per output element, recorded as such). TVM emits CUDA C; the device kernels' parameter
order and launch dims are read from the lowered IR; cuda_host.py writes the host launchers the
executor calls; nvcc compiles it all with spills refused (artifact/cuda.py).
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field

import tvm
from tvm.s_tir import dlight as dl

from ..plan import LoweringError
from . import cuda_attention, cuda_host, cuda_qlinear
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
    param_vars: list = field(default_factory=list, repr=False)   # the TIR vars behind `params`


@dataclass
class CudaModule:
    source: str                  # TVM's CUDA C for the device kernels
    kernels: list[DeviceKernel]
    rules: dict[str, str] = field(default_factory=dict)    # kernel -> dlight rule applied
    launchers: list = field(default_factory=list)          # cuda_host.Launcher per kernel

    def artifact_source(self) -> str:
        """One .cu: the device kernels, then the host launchers the executor calls."""
        return self.source + "\n" + cuda_host.render(self.launchers)


def target_for(preset) -> "tvm.target.Target":
    spec = dict(preset.tvm_target, max_shared_memory_per_block=MAX_SHARED_BYTES,
                max_threads_per_block=MAX_THREADS_PER_BLOCK, thread_warp_size=32, host={"kind": "llvm"})
    return tvm.target.Target(spec)


_RULES = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
          dl.gpu.Fallback()]
# A weight GEMM's tail kernel runs the rows short of a block: decode's single token, a short
# prompt's few. Memory-bound: a GEMV schedule (a warp per output row of W[N, K]), never tiles.
_TAIL_RULES = [dl.gpu.GEMV(), dl.gpu.LowBatchGEMV(), *_RULES]


def schedule(kernels: dict[str, Kernel], target, bounds: dict[str, int] | None = None,
             shared_scope: str = "shared.dyn", max_shared: int = cuda_attention.MAX_SHARED_BYTES
             ) -> tuple["tvm.IRModule", dict[str, str]]:
    """A GPU schedule per kernel (CUDA's and Metal's: `target` tells dlight which, shared_scope
    and max_shared where attention keeps its scores); kernel -> the dlight rule that scheduled it
    (the fallback, one thread per output element, is named, never silent)."""
    extern = sorted(k.name for k in kernels.values() if k.kind == "extern")
    if extern:
        raise LoweringError(f"{len(extern)} kernel(s) call CPU micro-kernels, which have no GPU version: "
                            f"{', '.join(extern[:5])}", phase="lower",
                            hint="quantized layers lower through lower_qlinear_gpu for GPU targets; this is a "
                                 "qcompile bug")
    funcs, rules = {}, {}
    own_schedules = {"attention": ("attention-rows", lambda f: cuda_attention.schedule(f, bounds or {}, shared_scope,
                                                                                   max_shared)),
                     "qgemm": ("qlinear-warp-per-column", cuda_qlinear.schedule),
                     "quantize_rows": ("quantize-rows-block", cuda_qlinear.schedule_quantize_rows)}
    for k in kernels.values():
        func, failed = None, []
        own = own_schedules.get(k.kind)
        if own:                          # our own GPU schedule, where dlight has none that fits
            try:
                func = own[1](k.func)
            except Exception as exc:     # noted, and dlight runs it
                failed.append(f"{own[0]}: {type(exc).__name__}: {str(exc).splitlines()[-1][:160]}")
            if func is not None:
                rules[k.name] = own[0]
        for rule in (_TAIL_RULES if k.kind in ("gemm1", "qgemm") else _RULES) if func is None else ():
            try:
                with target:
                    done = rule.apply(k.func, target, False)
            except Exception as exc:     # a rule matched and then failed: try the next, say why
                failed.append(f"{type(rule).__name__}: {type(exc).__name__}: {str(exc).splitlines()[-1][:100]}")
                continue
            if done is not None:
                sch = done[0] if isinstance(done, list) else done
                func, rules[k.name] = sch.mod["main"], f"dlight.{type(rule).__name__}"
                break
        if func is None:
            raise LoweringError(f"kernel {k.name} ({k.kind}): no GPU schedule applies ({'; '.join(failed)})",
                                phase="schedule", hint="this is a qcompile bug; please report it")
        own_failed = own and rules[k.name] != own[0]
        if failed and (rules[k.name] == "dlight.Fallback" or own_failed):    # never silently another schedule
            rules[k.name] += f" ({failed[0]})"
        funcs[k.name] = func.with_attr("global_symbol", k.name)
    return tvm.IRModule(funcs), rules


def lower(kernels: dict[str, Kernel], preset, bounds: dict[str, int] | None = None) -> CudaModule:
    """bounds: each symbolic dim's largest value (the plan's), for what must fit on chip."""
    target = target_for(preset)
    module, rules = schedule(kernels, target, bounds)
    try:      # lowered once: the host half feeds the launchers, the device half TVM's CUDA codegen
        host, devices = split_host_device(module, target)
        build = importlib.import_module("tvm.tirx.build")
        source = "\n".join(build.codegen_build(m, t).inspect_source() for t, m in devices.items())
    except Exception as exc:
        raise LoweringError(f"TVM could not generate CUDA: {type(exc).__name__}: {str(exc)[:2000]}",
                            phase="compile") from exc
    device = device_kernels(devices, launch_bounds(source))
    params = {d.name: d.param_vars for d in device}
    launchers = [cuda_host.launcher(gv.name_hint, kernels[gv.name_hint].func, fn, params)
                 for gv, fn in host.functions.items() if gv.name_hint in kernels]
    check_launches(device)
    return CudaModule(source, device, rules, sorted(launchers, key=lambda ln: ln.name))


def split_host_device(module, target):
    """TVM's lowering pipeline, then its host/device split: (host module, {target: device module})."""
    build = importlib.import_module("tvm.tirx.build")
    pipeline, _, finalize_device = tvm.tirx.get_default_tir_pipeline(target)
    lowered = pipeline(tvm.tirx.transform.BindTarget(target)(module))
    host, devices = build.split_host_device_mods(lowered)
    return host, {t: finalize_device()(m) for t, m in devices.items()}


def launch_bounds(source: str) -> dict[str, int]:
    """__global__ function -> its __launch_bounds__ in TVM's CUDA C."""
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"__launch_bounds__\((\d+)\)\s+(\w+)\s*\(", source)}


def device_kernels(devices: dict, bounds: dict[str, int]) -> list[DeviceKernel]:
    """Parameter order and launch dims, from the lowered IR (the runtime module does not keep
    them; TVM orders a kernel's parameters by name, not as the PrimFunc does)."""
    out = []
    for device_mod in devices.values():
        for gv, fn in device_mod.functions.items():
            name = gv.name_hint
            launch = [str(p) for p in fn.attrs["tirx.kernel_launch_params"]]
            out.append(DeviceKernel(name, name.rsplit("_kernel", 1)[0], [p.name for p in fn.params], launch,
                                    bounds.get(name), list(fn.params)))
    return sorted(out, key=lambda k: k.name)


def check_launches(kernels: list[DeviceKernel], max_threads: int = MAX_THREADS_PER_BLOCK) -> None:
    """A block larger than the GPU allows compiles without complaint and fails only at launch."""
    bad = [f"{k.name} ({k.launch_bounds} threads)" for k in kernels
           if k.launch_bounds is not None and not 0 < k.launch_bounds <= max_threads]
    if bad:
        raise LoweringError(f"kernel(s) launch more than {max_threads} threads per block: {', '.join(bad)}",
                            phase="schedule", hint="this is a qcompile schedule bug; please report it")
