"""CPU schedule templates, chosen by kernel family, with parameters (qcompile/tune/space.py lists
them and their rule-based defaults; `qcompile tune` measures other values).

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


def schedule(kernel: Kernel, target, params: dict | None = None) -> tuple[object, str]:
    """Returns (scheduled PrimFunc, name of the template applied). `params` are the template's
    (missing ones take their defaults)."""
    params = params or {}
    for template in _TEMPLATES.get(kernel.kind, []) + [_parallel_outer]:
        sch = s_tir.Schedule(tvm.IRModule({"main": kernel.func}))
        try:
            name = template(sch, kernel, params)
        except Exception:       # the template does not fit this kernel: try the next, simpler one
            continue
        if name:
            return sch.mod["main"], name
    return kernel.func, "naive"


def _parallel(sch, loop, params) -> None:
    if params.get("parallel", 1):
        sch.parallel(loop)


def _blocks(sch):
    return sch.get_child_blocks(sch.get_sblock("root"))


def _static(extent) -> int | None:
    return int(extent) if isinstance(extent, tirx.IntImm) else None


def _extent(sch, loop):
    return sch.get(loop).extent


def _gemm(rows_per_tile: int):
    def template(sch, kernel, params) -> str | None:
        """2-D GEMM: rows_per_tile x NB accumulators in registers, NB vectorized, parallel over N tiles."""
        block = sch.get_sblock("matmul")
        m, n, k = sch.get_loops(block)
        nb = kernel.panel
        vector = params.get("vector", VECTOR)
        if nb % vector:
            return None
        mo, mi = sch.split(m, [None, rows_per_tile])
        no, ni = sch.split(n, [None, nb])
        nio, nii = sch.split(ni, [None, vector])
        k_ext = _static(_extent(sch, k))
        ku = params.get("ku", MATMUL_KU)
        ku = ku if k_ext and k_ext % ku == 0 else 1
        ko, ki = sch.split(k, [None, ku])
        sch.reorder(no, mo, ko, ki, mi, nio, nii)
        acc = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(acc, mo)
        _parallel(sch, no, params)
        sch.unroll(ki)
        sch.unroll(mi)
        sch.unroll(nio)
        sch.vectorize(nii)
        sch.decompose_reduction(block, ko)
        sch.vectorize(sch.split(sch.get_loops(acc)[-1], [None, vector])[1])
        serial = "" if params.get("parallel", 1) else "-serial"
        return f"gemm-{rows_per_tile}x{nb}-ku{ku}-v{vector}{serial}"
    return template


def _batched_matmul(sch, kernel, params) -> str | None:
    """Batched A[..., m, k] x B[..., k, n] (attention): rows in parallel, k outside n, each row
    of B added into the output row (which stays in L1)."""
    blocks = _blocks(sch)
    if len(blocks) != 1:
        return None
    block = blocks[0]
    *outer, m, n, k = sch.get_loops(block)
    rows = sch.fuse(*outer, m) if outer else m
    sch.reorder(rows, k, n)
    _parallel(sch, rows, params)
    sch.decompose_reduction(block, k)
    return "batched-matmul-rows" + ("" if params.get("parallel", 1) else "-serial")      # n has a run-time extent: LLVM vectorizes it with a remainder


def _injective(sch, kernel, params) -> str | None:
    """Vectorize the innermost dim when it is a static multiple of the lanes (no index math per
    lane) and run the outer loops in parallel; otherwise fuse everything and vectorize chunks."""
    blocks = _blocks(sch)
    if len(blocks) != 1:
        return None
    vector, chunk = params.get("vector", VECTOR), params.get("chunk", VECTOR * 64)
    serial = "" if params.get("parallel", 1) else "-serial"
    loops = sch.get_loops(blocks[0])
    inner = _static(_extent(sch, loops[-1]))
    if inner and inner % vector == 0 and len(loops) > 1:
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        _parallel(sch, outer, params)
        _, lanes = sch.split(loops[-1], [None, vector])
        sch.vectorize(lanes)
        return f"injective-rows-vector{vector}{serial}"
    if len(loops) > 1 and inner is None:
        # a run-time inner extent (a sequence dim): keep it as the loop it is, so indices step by
        # one instead of being rebuilt with divisions per element, and run the rows in parallel
        outer = sch.fuse(*loops[:-1]) if len(loops) > 2 else loops[0]
        _parallel(sch, outer, params)
        return f"injective-rows{serial}"
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    outer, inner_loop = sch.split(fused, [None, chunk])
    _parallel(sch, outer, params)
    _, lanes = sch.split(inner_loop, [None, vector])
    sch.vectorize(lanes)
    return f"injective-parallel-vector{vector}-chunk{chunk}{serial}"


def _fused(sch, kernel, params) -> str | None:
    """An elementwise chain: inline every member into the last, then as injective."""
    blocks = _blocks(sch)
    for b in blocks[:-1]:
        sch.compute_inline(b)
    name = _injective(sch, kernel, params)
    return name and f"fused-{len(blocks)}-{name}"


def _parallel_outer(sch, kernel, params) -> str | None:
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
    def template(sch, kernel, params) -> str | None:
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
        _parallel(sch, row, params)
        for block in reversed(blocks[:-1]):
            sch.compute_at(block, row)
        return name + ("" if params.get("parallel", 1) else "-serial")
    return template


def _attention_vector(sch, kernel, params) -> str | None:
    """Attention rows (as _rows), with the two products over the head dim vectorized: q.k split
    into `vector` partial sums (rfactor: lanes of contiguous d, added up at the end), and p.v with
    the key position outside and the head dim as the vector. Same math; the q.k sum is taken in
    another order (within float rounding of the scalar one)."""
    lanes = params.get("vector", VECTOR)
    if not lanes:
        return None
    dot = sch.get_sblock("dot")
    d = sch.get_loops(dot)[-1]
    d_ext = _static(_extent(sch, d))
    if not d_ext or d_ext % lanes:
        return None
    _, di = sch.split(d, [None, lanes])
    rf = sch.rfactor(di, factor_axis=4)       # partial sums [b, h, s, t, lane]: lanes contiguous
    name = _rows("attention-rows")(sch, kernel, params)       # every stage inside its row
    if not name:
        return None
    lane, t, do = sch.get_loops(rf)[-3:]     # compute_at rebuilt them in the block's iter order
    if _static(_extent(sch, lane)) != lanes:
        return None
    sch.reorder(t, do, lane)
    sch.vectorize(lane)
    sch.decompose_reduction(rf, do)
    acc = sch.get_sblock("acc")
    j, r = sch.get_loops(acc)[-2:]
    sch.reorder(r, j)
    sch.vectorize(j)
    sch.decompose_reduction(acc, r)        # after vectorize, as the GEMM template does
    sch.vectorize(sch.get_loops(sch.get_sblock("acc_init"))[-1])
    sch.vectorize(sch.get_loops(sch.get_sblock("attn"))[-1])
    return f"{name}-vector{lanes}"


def _extern(sch, kernel, params) -> str:
    """Loops around a C micro-kernel: built parallel already (extern_ops)."""
    return "extern-parallel"


_TEMPLATES = {
    "extern": [_extern],
    "attention": [_attention_vector, _rows("attention-rows")],
    "rows": [_rows("rows")],
    "gemm4": [_gemm(4)],
    "gemm1": [_gemm(1)],
    "matmul": [_batched_matmul],
    "injective": [_injective],
    "fused": [_fused],
}
