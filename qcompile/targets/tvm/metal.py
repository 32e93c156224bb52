"""Metal device code for a plan's kernels: the GPU schedules CUDA uses (cuda.schedule: qcompile's
own for attention and quantized layers, dlight's for the rest), TVM's MSL, and the host
launchers (metal_host.py) that dispatch it through the artifact's Metal runtime.

Apple GPU family 7+ (M1/A14 and later): SIMD groups of 32 threads, 32 KiB of threadgroup memory,
up to 1024 threads per threadgroup. Metal has no dynamically sized threadgroup memory in TVM's
codegen, so attention keeps its row of scores in a static array sized by the plan's key bound.
No Apple compiler runs here: the MSL is checked by qcompile.testing.metal_cpu (type check and
CPU run) and compiled on a Mac by the artifact's build script.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field

import tvm

from ..plan import LoweringError
from . import cuda, cuda_host, metal_host
from .cuda import DeviceKernel
from .kernels import Kernel

MAX_THREADS_PER_THREADGROUP = 1024
SIMD_WIDTH = 32
THREADGROUP_BYTES = 32768
# attention's scores take what the reductions' few words leave
ATTENTION_SCORE_BYTES = THREADGROUP_BYTES - 1024


@dataclass
class MetalModule:
    source: str                  # TVM's MSL, every kernel in one file
    kernels: list[DeviceKernel]
    rules: dict[str, str] = field(default_factory=dict)    # kernel -> schedule
    launchers: list = field(default_factory=list)          # cuda_host.Launcher per kernel

    def host_source(self) -> str:
        """The launchers and the kernel table, C++ that compiles as Objective-C++ (kernels_host.mm)."""
        return metal_host.render(self.launchers, [k.name for k in self.kernels])


def target_for(preset) -> "tvm.target.Target":
    return tvm.target.Target(dict(preset.tvm_target, max_threads_per_block=MAX_THREADS_PER_THREADGROUP,
                                  thread_warp_size=SIMD_WIDTH, max_shared_memory_per_block=THREADGROUP_BYTES,
                                  host={"kind": "llvm"}))


def lower(kernels: dict[str, Kernel], preset, bounds: dict[str, int] | None = None) -> MetalModule:
    target = target_for(preset)
    module, rules = cuda.schedule(kernels, target, bounds, shared_scope="shared", max_shared=ATTENTION_SCORE_BYTES)
    try:
        host, devices = cuda.split_host_device(module, target)
        build = importlib.import_module("tvm.tirx.build")
        source = one_file("\n".join(build.codegen_build(m, t).inspect_source() for t, m in devices.items()))
    except Exception as exc:
        raise LoweringError(f"TVM could not generate Metal: {type(exc).__name__}: {str(exc)[:2000]}",
                            phase="compile") from exc
    device = cuda.device_kernels(devices, {})
    index = {k.name: i for i, k in enumerate(device)}
    types = {k.name: ["handle" if isinstance(p.ty, tvm.ir.PointerType) else str(p.ty) for p in k.param_vars]
             for k in device}
    params = {k.name: k.param_vars for k in device}
    launchers = [cuda_host.launcher(gv.name_hint, kernels[gv.name_hint].func, fn, params,
                                    emitter=lambda *a: metal_host.MetalEmitter(*a, index, types))
                 for gv, fn in host.functions.items() if gv.name_hint in kernels]
    missing = sorted(set(index) - set(_kernel_names(source)))
    if missing:
        raise LoweringError(f"TVM's MSL lacks kernel(s) the launchers dispatch: {', '.join(missing[:5])}",
                            phase="compile", hint="this is a qcompile bug; please report it")
    return MetalModule(source, device, rules, sorted(launchers, key=lambda ln: ln.name))


_PREAMBLE = re.compile(r"^#include <[\w.]+>\n|^using namespace metal;\n"
                       r"|^union __TVMArgUnion \{\n int v_int\[2\];\n\};\n", re.M)


def one_file(source: str) -> str:
    """TVM writes each kernel as its own unit (the includes and a helper union repeated): one
    .metal file with them once, so the whole library type-checks and compiles as one."""
    head = list(dict.fromkeys(m.group(0) for m in _PREAMBLE.finditer(source)))
    includes = [h for h in head if h.startswith("#include")]
    rest = [h for h in head if not h.startswith("#include")]
    body = re.sub(r"\n{3,}", "\n\n", _PREAMBLE.sub("", source)).strip()
    return "".join(includes) + "".join(rest) + "\n" + body + "\n"


def _kernel_names(source: str) -> list[str]:
    return re.findall(r"\bkernel\s+void\s+(\w+)\s*\(", source)
