"""Schedule every kernel and compile them all into one object file with TVM's LLVM backend."""

from __future__ import annotations

from pathlib import Path

import tvm

from ..plan import LoweringError
from ..presets import Preset
from .kernels import Kernel
from .schedules import schedule


def tvm_target(preset: Preset, num_cores: int | None = None) -> "tvm.target.Target":
    spec = dict(preset.tvm_target)
    if num_cores:
        spec["num-cores"] = num_cores
    return tvm.target.Target(spec)


def schedule_all(kernels: dict[str, Kernel], target, progress=None,
                 params: dict[str, dict] | None = None) -> tuple["tvm.IRModule", dict[str, str]]:
    """Apply each kernel's schedule template (with its tuned parameters, if any); returns the
    module and kernel -> template name."""
    funcs, used = {}, {}
    params = params or {}
    for i, k in enumerate(kernels.values()):
        try:
            funcs[k.name], used[k.name] = schedule(k, target, params.get(k.name))
        except Exception as exc:
            raise LoweringError(f"scheduling kernel {k.name} ({k.kind}) failed: {type(exc).__name__}: {exc}",
                                phase="schedule") from exc
        if progress:
            progress(i + 1, len(kernels))
    return tvm.IRModule(funcs), used


def compile_kernels(kernels: dict[str, Kernel], preset: Preset, out_obj: Path, progress=None,
                    params: dict[str, dict] | None = None) -> dict[str, str]:
    """Schedule and compile; returns kernel -> schedule name, and writes out_obj."""
    target = tvm_target(preset)
    module, used = schedule_all(kernels, target, progress, params)
    try:
        executable = tvm.compile(module, target=target)
    except Exception as exc:
        raise LoweringError(f"TVM could not compile the kernels: {type(exc).__name__}: {str(exc)[:2000]}",
                            phase="compile") from exc
    executable.mod.write_to_file(str(out_obj))
    return used


def tvm_version() -> str:
    return tvm.__version__
