"""CPU schedule templates, chosen by kernel family. Rule-based defaults until tuning exists.

Every template only splits, reorders, parallelizes, vectorizes and caches: it never changes
what a kernel computes, so the tests that compare kernels with the reference cover them all.
A template that does not apply (shapes it cannot tile) falls back to a simpler one, and the
name of what was applied is recorded in the manifest.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx

from .kernels import Kernel

VECTOR = 16          # fp32 lanes in an AVX-512 register
MATMUL_NB = 64       # columns of the register tile (4 vectors)
MATMUL_KU = 4        # k unroll


def schedule(kernel: Kernel, target) -> tuple[object, str]:
    """Returns (scheduled PrimFunc, name of the template applied)."""
    for template in _TEMPLATES.get(kernel.kind, []) + [_parallel_outer]:
        sch = s_tir.Schedule(tvm.IRModule({"main": kernel.func}))
        try:
            name = template(sch, kernel)
        except Exception:       # the template does not fit this kernel: try the next, simpler one
            continue
        if name:
            return sch.mod["main"], name
    return kernel.func, "naive"


def _blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root"))


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _extent(sch, loop):
    return sch.get(loop).extent


def _gemm(rows_per_tile: int):
    def template(sch, kernel) -> str | None:
        """2-D GEMM: rows_per_tile x NB accumulators in registers, NB vectorized, parallel over N tiles."""
        block = sch.get_sblock("matmul")
        m, n, k = sch.get_loops(block)
        nb = kernel.panel
        if nb % VECTOR:
            return None
        mo, mi = sch.split(m, [None, rows_per_tile])
        no, ni = sch.split(n, [None, nb])
        nio, nii = sch.split(ni, [None, VECTOR])
        k_ext = _static(_extent(sch, k))
        ku = MATMUL_KU if k_ext and k_ext % MATMUL_KU == 0 else 1
        ko, ki = sch.split(k, [None, ku])
        sch.reorder(no, mo, ko, ki, mi, nio, nii)
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, mo)
        sch.parallel(no)
        sch.unroll(ki)
        sch.unroll(mi)
        sch.unroll(nio)
        sch.vectorize(nii)
        sch.decompose_reduction(block, ko)
        sch.vectorize(sch.split(sch.get_loops(acc)[-1], [None, VECTOR])[1])
        return f"gemm-{rows_per_tile}x{nb}"
    return template


def _batched_matmul(sch, kernel=None) -> str | None:
    """Batched A[..., m, k] x B[..., k, n] (attention): rows in parallel, k outside n, each row
    of B added into the output row (which stays in L1)."""
    blocks = _blocks(sch)
    if len(blocks) != 1:
        return None
    block = blocks[0]
    *outer, m, n, k = sch.get_loops(block)
    rows = sch.fuse(*outer, m) if outer else m
    sch.reorder(rows, k, n)
    sch.parallel(rows)
    sch.decompose_reduction(block, k)
    return "batched-matmul-rows"      # n has a run-time extent: LLVM vectorizes it with a remainder


def _injective(sch, kernel=None) -> str | None:
    """Vectorize the innermost dim when it is a static multiple of 16 lanes (no index math per
    lane) and run the outer loops in parallel; otherwise fuse everything and vectorize chunks."""
    blocks = _blocks(sch)
    if len(blocks) != 1:
        return None
    loops = sch.get_loops(blocks[0])
    inner = _static(_extent(sch, loops[-1]))
    if inner and inner % VECTOR == 0 and len(loops) > 1:
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        sch.parallel(outer)
        _, lanes = sch.split(loops[-1], [None, VECTOR])
        sch.vectorize(lanes)
        return "injective-rows-vector"
    if len(loops) > 1 and inner is None:
        # a run-time inner extent (a sequence dim): keep it as the loop it is, so indices step by
        # one instead of being rebuilt with divisions per element, and run the rows in parallel
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        sch.parallel(outer)
        return "injective-rows"
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    outer, inner_loop = sch.split(fused, [None, VECTOR * 64])
    sch.parallel(outer)
    _, lanes = sch.split(inner_loop, [None, VECTOR])
    sch.vectorize(lanes)
    return "injective-parallel-vector"


def _fused(sch, kernel=None) -> str | None:
    """An elementwise chain: inline every member into the last, then as injective."""
    blocks = _blocks(sch)
    for b in blocks[:-1]:
        sch.compute_inline(b)
    name = _injective(sch, kernel)
    return name and f"fused-{len(blocks)}-{name}"


def _parallel_outer(sch, kernel=None) -> str | None:
    """Fallback: each block's spatial loops outside any reduction, fused and parallelized."""
    changed = False
    for block in _blocks(sch):
        loops = sch.get_loops(block)
        iters = sch.get(block).iter_vars
        spatial = []
        for lp, iv in zip(loops, iters):
            if iv.iter_type != tirx.IterVar.DataPar:
                break
            spatial.append(lp)
        if not spatial:
            continue
        fused = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        sch.parallel(fused)
        changed = True
    return "parallel-outer" if changed else None


def _rows(name: str):
    def template(sch, kernel=None) -> str | None:
        """One parallel task per row (every output axis but the last): each stage (attention's
        scores, max, exp, sum and weighted values; a Hadamard's butterflies) is computed inside
        its row, on row-sized scratch."""
        blocks = _blocks(sch)
        out = blocks[-1]
        spatial = [iv for iv in sch.get(out).iter_vars if iv.iter_type == tirx.IterVar.DataPar]
        loops = sch.get_loops(out)
        lead = loops[:len(spatial) - 1]
        if not lead:
            return None
        row = sch.fuse(*lead) if len(lead) > 1 else lead[0]
        sch.parallel(row)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, row)
        return name
    return template


def _extern(sch, kernel=None) -> str:
    """Loops around a C micro-kernel: built parallel already (extern_ops)."""
    return "extern-parallel"


_TEMPLATES = {
    "extern": [_extern],
    "attention": [_rows("attention-rows")],
    "rows": [_rows("rows")],
    "gemm4": [_gemm(4)],
    "gemm1": [_gemm(1)],
    "matmul": [_batched_matmul],
    "injective": [_injective],
    "fused": [_fused],
}
