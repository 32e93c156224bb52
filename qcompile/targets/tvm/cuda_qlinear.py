"""The GPU schedule of a quantized linear layer (te_quant.qlinear: y = xscale * sum_k xq *
dequant(W[n, k])): a warp per output column, each lane reading `VECTOR` consecutive int8 weights
per step so a warp streams contiguous 32 x VECTOR bytes of W's row; the lanes' partial sums meet
in warp shuffles, and the epilogue (x's row scale) is applied once per output. Rows (tokens) are
the grid's second dimension: decode is one row, a prompt re-reads W from L2.

A lane's VECTOR bytes of W and of the row come in one vector load (16 bytes: `int4`).
dlight's GEMV rules do not match the per-group scale (indexed k // group) of these kernels; its
GeneralReduction fallback ran one block per row.
"""

from __future__ import annotations

import tvm
from tvm import tirx

WARPS = 4          # output columns per block
LANES = 32


def schedule(func):
    """The scheduled PrimFunc, or None when the kernel is not acc -> y as te_quant builds it."""
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    if names != ["acc", "y"]:
        return None
    acc, y = sch.get_sblock("acc"), sch.get_sblock("y")
    *rows, n, k = sch.get_loops(acc)
    k_ext = sch.get(k).extent
    if not isinstance(k_ext, tirx.IntImm):
        return None
    k_ext = int(k_ext.value)
    vector = next((v for v in (16, 8, 4, 1) if k_ext % (LANES * v) == 0), 1)
    row = sch.fuse(*rows) if rows else None
    nb, ni = sch.split(n, [None, WARPS])
    ko, lane, kv = sch.split(k, [None, LANES, vector])
    sch.reorder(nb, *([row] if row is not None else []), ni, ko, lane, kv)
    sch.bind(nb, "blockIdx.x")
    if row is not None:
        sch.bind(row, "blockIdx.y")
    sch.bind(ni, "threadIdx.y")
    sch.bind(lane, "threadIdx.x")
    sch.reverse_compute_at(y, ni)
    sch.set_scope(acc, 0, "local")
    if vector > 1:       # each lane's bytes of W and of the int8 row in one load (int4 = 16 bytes)
        reads = [r.source.name for r in sch.get(acc).reads]
        for name in ("in2", "in0"):                     # W[N, K], then xq (kernels.py names operands in<i>)
            local = sch.cache_read(acc, reads.index(name), "local")
            sch.compute_at(local, sch.get_loops(acc)[-2])
            try:
                sch.vectorize(sch.get_loops(local)[-1])
            except tvm.s_tir.ScheduleError:     # one byte of W per lane (2-bit fields, VECTOR 4): a plain load
                pass
    return sch.mod["main"]


def _elementwise(sch, block, threads: int = 256) -> None:
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    bx, tx = sch.split(fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def schedule_quantize_rows(func):
    """te_quant.quantize_rows (amax -> inv -> xq, and scale): each row's max |x| by one block
    (a tree of warp shuffles), then the int8 row and the scale as elementwise launches. dlight
    had only its fallback: one thread per row walking all of K, three times."""
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    if sorted(names) != ["amax", "inv", "scale", "xq"]:
        return None
    sch.compute_inline(sch.get_sblock("inv"))
    amax = sch.get_sblock("amax")
    *rows, k = sch.get_loops(amax)
    k_ext = sch.get(k).extent
    reduces = any(iv.iter_type == 2 for iv in sch.get(amax).iter_vars)       # 2: a reduction axis
    if not reduces:                       # a static range: a constant, recomputed where it is read
        sch.compute_inline(amax)
    else:
        if not isinstance(k_ext, tirx.IntImm) or not rows:
            return None
        k_ext = int(k_ext.value)
        # whole warps with no bounds check (a predicate around a multi-warp allreduce is refused)
        threads = next((t for t in (1024, 512, 256, 128, 64, 32) if k_ext % t == 0), LANES)
        row = sch.fuse(*rows)
        sch.bind(row, "blockIdx.x")
        _, lane = sch.split(k, [None, threads])
        sch.bind(lane, "threadIdx.x")
    for name in ("scale", "xq"):
        _elementwise(sch, sch.get_sblock(name))
    return sch.mod["main"]
