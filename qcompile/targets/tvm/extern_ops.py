"""TIR for kernels whose inner loops are hand-written C micro-kernels (artifact/runtime/qc_qlinear.c).

TIR owns the loop structure and threading (a parallel loop over row blocks or weight panels, run
by the artifact's thread pool); each iteration calls the micro-kernel through `call_extern`.
"""

from __future__ import annotations

from functools import reduce

import numpy as np
from tvm import te, tirx
from tvm.ir import StringImm

from ..qlinear_layout import FAMILY_CODES

# Rows per QuantizeRows task: enough work per task that threading pays for prefill.
ROWS_PER_TASK = 8


def _i64(v):
    return tirx.const(int(v), "int64")


def _i32(v):
    return tirx.const(int(v), "int32")


def _index(expr):
    """Loop indices go to C as int32 (see qc_qlinear.h): TVM may narrow a parallel loop's variable
    to int32, and an int32 parameter reads either width correctly."""
    return tirx.Cast("int32", expr)


def _checked(call, what: str):
    """Run a micro-kernel call and fail the whole kernel, with a message, if it returns nonzero:
    a refused call must never leave its output unwritten in silence."""
    rc = tirx.Var("rc", "int32")
    message = [StringImm(f"the micro-kernel {what} refused its arguments; this is a qcompile bug")]
    return tirx.SeqStmt([tirx.Bind(rc, call),
                         # apache-tvm 0.27's Python wrapper names (kind, condition) but forwards them
                         # positionally to a constructor that takes (condition, kind)
                         tirx.AssertStmt(rc == 0, StringImm("RuntimeError"), message)])


def _rows(shape) -> object:
    return reduce(lambda a, b: a * b, shape[:-1], _i64(1))


def _row_tasks(x, out_shapes, out_dtypes, fn: str, args, name: str):
    """x[rows..., K] -> three per-row outputs (int8 rows, scales, group sums) by the micro-kernel
    fn(x, *head, xq, xscale, xsum, m0, m1, *tail) over tasks of ROWS_PER_TASK rows, in parallel;
    args = (head, tail)."""
    head, tail = args
    rows = _rows(x.shape)

    def body(ins, outs):
        t = tirx.Var("task", "int64")
        lo = t * ROWS_PER_TASK
        hi = tirx.min(lo + ROWS_PER_TASK, rows)
        call = tirx.call_extern("int32", fn, ins[0].data, *head, outs[0].data, outs[1].data, outs[2].data,
                                _index(lo), _index(hi), *tail)
        tasks = tirx.floordiv(rows + ROWS_PER_TASK - 1, _i64(ROWS_PER_TASK))
        return tirx.For(t, _i64(0), tasks, tirx.ForKind.PARALLEL, _checked(call, fn))

    return list(te.extern(out_shapes, [x], body, dtype=list(out_dtypes), name=name))


def quantize_rows(node, data, out_shapes, out_dtypes):
    """x[rows..., K] -> int8 rows, their scales and per-group sums (see qc_quantize_rows; with attr
    amax, static scales: qc_quantize_rows_static with that clipping range as a float constant)."""
    x = data[0]
    k, group = int(x.shape[-1]), int(node.attrs["group"])
    amax = node.attrs.get("amax")
    fn = "qc_quantize_rows" if amax is None else "qc_quantize_rows_static"
    extra = [] if amax is None else [tirx.const(float(np.float32(amax)), "float32")]
    return _row_tasks(x, out_shapes, out_dtypes, fn, ([], [_i64(k), _i64(group), *extra]), "quantize_rows")


def file_rows(node, data, out_shapes, out_dtypes):
    """A QDQ file's int8/uint8 activations -> the rows QLinearPacked reads (see qc_file_rows)."""
    x = data[0]
    k, group = int(x.shape[-1]), int(node.attrs["group"])
    scale = tirx.const(float(np.float32(node.attrs["scale"])), "float32")
    return _row_tasks(x, out_shapes, out_dtypes, "qc_file_rows",
                      ([_i32(x.dtype == "uint8")], [_i64(k), _i64(group), scale]), "file_rows")


def qlinear_packed(node, data, out_shapes, out_dtypes):
    """y[rows..., N] from quantized rows and a packed weight, one task per weight panel."""
    xq, xs, xsum, w, s = data[:5]
    zp = data[5] if len(data) > 5 else None
    colsum = data[6] if len(data) > 6 else None
    a = node.attrs
    tiles, n_dim = int(a["tiles"]), int(a["N"])
    panels = n_dim // (16 * tiles)
    rows = _rows(xq.shape)
    ins = [xq, xs, xsum, w, s] + [t for t in (zp, colsum) if t is not None]

    def body(buf, outs):
        by = dict(zip(("xq", "xs", "xsum", "w", "s"), buf[:5]))
        extra = list(buf[5:])
        zp_ptr = extra.pop(0).data if zp is not None else by["s"].data     # absent: never read
        colsum_ptr = extra.pop(0).data if colsum is not None else by["s"].data
        p = tirx.Var("panel", "int64")
        call = tirx.call_extern("int32", "qc_qlinear_panel", outs[0].data, by["w"].data, by["s"].data, zp_ptr,
                                colsum_ptr, by["xq"].data, by["xs"].data, by["xsum"].data, rows,
                                _i64(a["K"]), _i64(n_dim), _i64(a["group"]), _i32(a["bits"]),
                                _i32(FAMILY_CODES[a["family"]]), _i32(tiles), _index(p))
        return tirx.For(p, _i64(0), _i64(panels), tirx.ForKind.PARALLEL, _checked(call, "qc_qlinear_panel"))

    return [te.extern(out_shapes[0], ins, body, dtype=out_dtypes[0], name="qlinear")]
