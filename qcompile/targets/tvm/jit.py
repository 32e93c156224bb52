"""Run a plan in-process through TVM's runtime: for tests of the lowering and for tuning.

The shipped artifact never uses this path; it calls the same kernels from generated C.
"""

from __future__ import annotations

import numpy as np
import tvm

from ...ir import dims
from ...ir.graph import Graph
from ..plan import Plan, resolve


def bind_symbols(g: Graph, feeds: dict[str, np.ndarray]) -> dict[str, int]:
    env: dict[str, int] = {}
    for name in g.inputs:
        for d, actual in zip(g.values[name].shape or (), feeds[name].shape):
            if isinstance(d, str) and dims.parse(d).is_symbol:
                env[d] = int(actual)
    return env


def run_plan(plan: Plan, module, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute plan with compiled kernels (`tvm.compile` result); returns the graph outputs."""
    g = plan.graph
    env = bind_symbols(g, feeds)
    values = dict(feeds)
    values.update({v.name: v.const for v in g.constants()})

    def view(name):
        shape = [dims.evaluate(d, env) for d in g.values[name].shape]
        return np.ascontiguousarray(values[resolve(plan, name)]).reshape(shape)

    for step in plan.steps:
        if step.row_block:
            _run_gemm(module, step, view(step.inputs[0]), view(step.inputs[1]), values, g)
            continue
        args = [tvm.runtime.tensor(view(x)) for x in step.inputs]
        outs = [tvm.runtime.tensor(np.empty([dims.evaluate(d, env) for d in g.values[o].shape],
                                            g.values[o].dtype.np_dtype)) for o in step.outputs]
        module[step.kernel](*args, *outs, *[env[s] for s in step.scalars])
        for name, t in zip(step.outputs, outs):
            values[name] = t.numpy()
    return {name: view(name) for name in g.outputs}


def _run_gemm(module, step, a: np.ndarray, w: np.ndarray, values: dict, g: Graph) -> None:
    """Row-split GEMM: whole blocks of rows through the main kernel, the rest through the tail."""
    panels, k, panel = w.shape          # packed W[N/P, K, P]
    n = panels * panel
    rows = a.reshape(-1, k)
    out = np.empty((rows.shape[0], n), g.values[step.outputs[0]].dtype.np_dtype)
    full = rows.shape[0] - rows.shape[0] % step.row_block
    wt = tvm.runtime.tensor(w)
    for kernel, lo, hi, extra in ((step.kernel, 0, full, [full // step.row_block]), (step.tail_kernel, full,
                                                                                   rows.shape[0], [])):
        if hi > lo:
            c = tvm.runtime.tensor(np.empty((hi - lo, n), out.dtype))
            module[kernel](tvm.runtime.tensor(np.ascontiguousarray(rows[lo:hi])), wt, c, *extra)
            out[lo:hi] = c.numpy()
    values[step.outputs[0]] = out.reshape(a.shape[:-1] + (n,))
