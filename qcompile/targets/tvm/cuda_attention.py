"""The GPU schedule of the fused attention kernel (te_ops: dot -> score -> mx -> ex -> acc/total
-> attn), one thread block per query row (batch x head x position):

- q.k for every key position t, one t per thread in turn, summed over the head dim in a register
  and kept in dynamic shared memory (4 bytes per key position: the row never leaves the SM);
- the row's max and the softmax denominator as block reductions (TVM's cross-thread allreduce);
- p.v with one thread per head-dim column: each step reads a contiguous row of V.

dlight has no rule for this chain; its fallback runs one thread per output element with every
stage in global memory (0.73 ms per layer at 256 keys on an H200, against about 20 us here).
"""

from __future__ import annotations

import tvm
from tvm import tirx

STAGES = ("dot", "mx", "acc", "total", "attn")
MAX_SHARED_BYTES = 48 * 1024      # what a block may take without opting in


_OPS = {tirx.Add: lambda a, b: a + b, tirx.Sub: lambda a, b: a - b, tirx.Mul: lambda a, b: a * b,
        tirx.FloorDiv: lambda a, b: a // b, tirx.Min: min, tirx.Max: max}


def _bound(expr, bounds: dict[str, int]) -> int | None:
    """A shape expression's value with every symbol at its bound (shapes grow with their symbols;
    None: a symbol without a bound, or an operation not listed)."""
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    if isinstance(expr, tirx.Var):
        return bounds.get(expr.name)
    if type(expr) in _OPS:
        a, b = _bound(expr.a, bounds), _bound(expr.b, bounds)
        return None if a is None or b is None else _OPS[type(expr)](a, b)
    return None


def schedule(func, bounds: dict[str, int], scope: str = "shared.dyn", max_bytes: int = MAX_SHARED_BYTES):
    """The scheduled PrimFunc, or None when this kernel is not the chain above (a ValueError says
    why it cannot be scheduled: a row longer than shared memory holds). scope: where the row of
    scores lives, "shared.dyn" (CUDA: sized at launch) or "shared" (Metal: the static size
    te_ops.attention's max_keys gives it)."""
    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": func}))
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    if not set(STAGES) <= set(names) or names[-1] != "attn":
        return None
    for name in names:                   # score, ex: recomputed where they are read
        if name not in STAGES:
            sch.compute_inline(sch.get_sblock(name))
    attn = sch.get_sblock("attn")
    *rows, col = sch.get_loops(attn)
    head_dim = sch.get(col).extent
    if not isinstance(head_dim, tirx.IntImm) or not 0 < int(head_dim.value) <= 1024:
        return None
    threads = int(head_dim.value)
    dot = sch.get_sblock("dot")
    keys = _bound(sch.get(sch.get_loops(dot)[-2]).extent, bounds)
    if keys is None or 4 * keys > max_bytes:
        raise ValueError(f"rows of up to {keys} keys do not fit in shared memory ({max_bytes} bytes); "
                         f"long rows need a split-K attention (not yet)")
    row = sch.fuse(*rows)
    sch.bind(row, "blockIdx.x")
    sch.bind(col, "threadIdx.x")
    for name in ("acc", "total", "mx", "dot"):     # consumers first: each producer then moves in
        sch.compute_at(sch.get_sblock(name), row)
    t = sch.get_loops(dot)[-2]
    _, ti = sch.split(t, [None, threads])
    sch.bind(ti, "threadIdx.x")
    sch.set_scope(dot, 0, scope)
    partial = sch.cache_write(dot, 0, "local")     # q.k summed in a register, stored once
    sch.reverse_compute_at(partial, ti)
    for name in ("mx", "total"):
        block = sch.get_sblock(name)
        _, ri = sch.split(sch.get_loops(block)[-1], [None, threads])
        sch.bind(ri, "threadIdx.x")
        sch.set_scope(block, 0, "shared")
    acc = sch.get_sblock("acc")
    sch.bind(sch.get_loops(acc)[-2], "threadIdx.x")
    sch.set_scope(acc, 0, "local")
    return sch.mod["main"]
