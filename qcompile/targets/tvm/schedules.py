"""CPU schedule templates, chosen by kernel family. Rule-based defaults until tuning exists.

Every template only reorders, splits, parallelizes and vectorizes: it never changes what a
kernel computes, so the tests that compare kernels with the reference cover all of them.
"""

from __future__ import annotations

import tvm
from tvm import s_tir

from .kernels import Kernel


def schedule(kernel: Kernel, target) -> tuple[object, str]:
    """Returns (scheduled PrimFunc, schedule name)."""
    sch = s_tir.Schedule(tvm.IRModule({"main": kernel.func}))
    name = "naive"
    try:
        if kernel.kind == "injective":
            name = _injective(sch)
    except (tvm.error.TVMError, s_tir.ScheduleError):
        sch = s_tir.Schedule(tvm.IRModule({"main": kernel.func}))
        name = "naive (template failed)"
    return sch.mod["main"], name


def _spatial_block(sch):
    blocks = sch.get_child_blocks(sch.get_sblock("root")) if _has_root(sch) else []
    return blocks


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:
        return False


def _injective(sch) -> str:
    """Fuse all output loops, parallelize chunks of them."""
    blocks = _spatial_block(sch)
    if len(blocks) != 1:
        return "naive"
    loops = sch.get_loops(blocks[0])
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    outer, _inner = sch.split(fused, [None, 1024])
    sch.parallel(outer)
    return "injective-parallel"


__all__ = ["schedule"]
