"""Plan steps -> TIR PrimFuncs: one kernel per distinct workload, shared by identical nodes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from tvm import te, tirx

from ...ir import dims
from ..plan import LoweringError, Plan, Step
from . import extern_ops, te_ops, te_quant

_BUILDERS = {
    **{op: ("plain", te_ops.elementwise) for op in te_ops.ELEMENTWISE_OPS},
    "MatMul": ("plain", te_ops.matmul), "Gemm": ("plain", te_ops.gemm),
    "Softmax": ("plain", te_ops.softmax), "LayerNormalization": ("plain", te_ops.layer_norm),
    "RMSNormalization": ("plain", te_ops.layer_norm), "SimplifiedLayerNormalization": ("plain", te_ops.layer_norm),
    "Transpose": ("plain", te_ops.transpose), "Concat": ("plain", te_ops.concat),
    "Gather": ("plain", te_ops.gather), "Expand": ("plain", te_ops.expand),
    "ConstantOfShape": ("plain", te_ops.constant_of_shape),
    "ReduceSum": ("consts", te_ops.reduce), "ReduceMean": ("consts", te_ops.reduce),
    "ReduceMax": ("consts", te_ops.reduce), "ReduceMin": ("consts", te_ops.reduce),
    "Slice": ("consts", te_ops.slice_), "Trilu": ("consts", te_ops.trilu),
    "Range": ("range", te_ops.range_),
    "qcompile.Attention": ("plain", te_ops.attention), "qcompile.Rotary": ("plain", te_ops.rotary),
    "qcompile.Hadamard": ("plain", te_ops.hadamard),
    "QuantizeLinear": ("plain", te_ops.quantize_linear), "DequantizeLinear": ("plain", te_ops.dequantize_linear),
    "qcompile.QuantizeRows": ("plain", extern_ops.quantize_rows),
    "qcompile.FileRows": ("plain", extern_ops.file_rows),
    "qcompile.QLinearPacked": ("plain", extern_ops.qlinear_packed),
    "qcompile.QuantizeRowsTIR": ("plain", te_quant.quantize_rows), "qcompile.QLinearTIR": ("plain", te_quant.qlinear),
}


def supported(op_id: str) -> bool:
    return op_id in _BUILDERS


@dataclass
class Kernel:
    name: str
    func: object                 # tirx.PrimFunc
    kind: str                    # schedule family: gemm4 | gemm1 | matmul | reduce | injective | fused | multi
    scalars: list                # symbolic dims (str) passed as trailing int64 params
    panel: int = 0               # GEMM: columns per packed weight panel


def _te_dtype(dtype) -> str:
    """The TE/TIR name of an IR dtype (numpy's names, except bool and bfloat16)."""
    return {"bool": "bool", "bf16": "bfloat16"}.get(dtype.name, dtype.np_dtype.name)


def _expr(dim, env: dict[str, tirx.Var]):
    lin = dims.parse(dim)
    out = tirx.const(lin.const, "int64") if lin.const or not lin.terms else None
    for sym, coeff in lin.terms:
        term = env[sym] if coeff == 1 else env[sym] * coeff
        out = term if out is None else out + term
    return out


def _role(step: Step, name: str) -> str:
    """How a fused member's operand is wired: a step input (by position) or an earlier member."""
    if name in step.inputs:
        return f"in{step.inputs.index(name)}"
    for i, (node, _) in enumerate(step.group):
        if name in node.outputs:
            return f"member{i}"
    return "const"


def _workload_key(plan: Plan, step: Step) -> str:
    g, n = plan.graph, step.node
    parts = [n.op_id, repr(sorted((k, repr(v)) for k, v in n.attrs.items()))]
    for name in step.inputs + step.outputs:
        v = g.values[name]
        parts.append(f"{v.dtype}{list(v.shape)}")
    for i, arr in sorted(step.inline.items()):
        parts.append(f"inline{i}:{arr.dtype}:{arr.tobytes().hex()}")
    for node, inline in step.group:       # a fused chain: every member and how they connect
        parts.append(f"{node.op_id}{sorted(node.attrs.items())}{[_role(step, x) for x in node.inputs]}")
        parts.extend(f"inline{i}:{a.dtype}:{a.tobytes().hex()}" for i, a in sorted(inline.items()))
        parts.extend(f"{g.values[x].dtype}{list(g.values[x].shape)}" for x in node.outputs)
    for i, name in enumerate(n.inputs):
        if name and g.values[name].const is not None and name not in step.inputs and i not in step.inline:
            parts.append(f"const{i}:{g.values[name].const.tobytes().hex()}")
    if step.materialize:
        parts.append(f"dims{list(step.materialize)}rank{len(g.values[step.outputs[0]].shape)}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def check_coverage(plan: Plan, target: str) -> None:
    """One error listing every op in the plan that has no kernel for this target yet."""
    missing: dict[str, list[str]] = {}
    for step in plan.steps:
        if not step.materialize and not step.group and step.node.op_id not in _BUILDERS:
            missing.setdefault(step.node.op_id, []).append(step.node.name)
    if missing:
        lines = [f"  {op}: {', '.join(names[:5])}" + (f", ... ({len(names)} nodes)" if len(names) > 5 else "")
                 for op, names in sorted(missing.items())]
        raise LoweringError(f"{len(missing)} op type(s) have no kernel for target {target} yet:\n" + "\n".join(lines),
                            hint="the reference interpreter runs them (qcompile inspect --ir); kernels for them "
                                 "are on the roadmap")


def build_kernels(plan: Plan, prefix: str) -> dict[str, Kernel]:
    """Create (deduplicated) kernels for every plan step; sets step.kernel and step.scalars."""
    kernels: dict[str, Kernel] = {}
    by_key: dict[str, str] = {}
    for step in plan.steps:
        key = _workload_key(plan, step)
        if key in by_key:
            step.kernel = by_key[key]
            step.scalars = kernels[step.kernel].scalars
            continue
        name = f"{prefix}_k{len(kernels)}"
        try:
            if step.row_block:
                kernel = _make_gemm(plan, step, name, step.row_block)
                tail = _make_gemm(plan, step, f"{name}_tail", 1)
                kernels[tail.name] = tail
            else:
                kernel = _make_kernel(plan, step, name)
        except LoweringError:
            raise
        except NotImplementedError as exc:
            raise LoweringError(f"no kernel for this case: {exc}", node=step.node.name, op=step.node.op_id) from None
        except Exception as exc:
            raise LoweringError(f"building the kernel failed: {type(exc).__name__}: {exc}",
                                node=step.node.name, op=step.node.op_id) from exc
        kernels[name] = kernel
        by_key[key] = name
        step.kernel, step.scalars = name, kernel.scalars
    for step in plan.steps:
        if step.row_block:
            step.tail_kernel = f"{step.kernel}_tail"
    return kernels


def _make_gemm(plan: Plan, step: Step, name: str, row_block: int) -> Kernel:
    """2-D GEMM [rows, K] x [K, N]. With row_block > 1 the rows are `blocks * row_block` and
    `blocks` comes as a scalar, so tiles of row_block rows need no bounds check. The weight is
    packed W[N/P, K, P] (CPU) or transposed W[N, K] (GPU, whose schedules need int64 dims
    throughout: dlight's Matmul fails on mixed index types)."""
    g = plan.graph
    a, w = (g.values[x] for x in step.inputs)
    gpu = w.rank == 2
    if gpu:
        (n_dim, k_dim), panel = w.shape, 1
    else:
        panels, k_dim, panel = w.shape
        n_dim = panels * panel
    ix = (lambda v: tirx.IntImm("int64", v)) if gpu else (lambda v: v)
    blocks = tirx.Var("blocks", "int64")
    rows = blocks * row_block if row_block > 1 else tirx.Var("rows", "int64")
    A = te.placeholder((rows, ix(k_dim)), a.dtype.np_dtype.name, name="in0")
    W = te.placeholder(tuple(map(ix, w.shape)), _te_dtype(w.dtype), name="in1")
    acc = a.dtype.np_dtype.name
    k = te.reduce_axis((ix(0), ix(k_dim)), name="k")
    if gpu:
        C = te.compute((rows, ix(n_dim)), lambda m, n: te.sum(A[m, k] * W[n, k].astype(acc), axis=k), name="matmul")
    else:
        C = te.compute((rows, n_dim), lambda m, n: te.sum(A[m, k] * W[n // panel, k, n % panel].astype(acc), axis=k),
                       name="matmul")
    args = [A, W, C] + ([blocks] if row_block > 1 else [])
    func = te.create_prim_func(args).with_attr("global_symbol", name)
    return Kernel(name, func, f"gemm{row_block}", [], panel)


def _make_kernel(plan: Plan, step: Step, name: str) -> Kernel:
    g, n = plan.graph, step.node
    shapes = [g.values[x].shape for x in step.inputs + step.outputs]
    shapes += [g.values[x].shape for node, _ in step.group for x in node.outputs]
    syms = sorted(set().union(*(dims.symbols_of(s) for s in shapes)) if shapes else set())
    if step.materialize:
        syms = sorted(set(syms) | dims.symbols_of(step.materialize))
    start = n.input(0) if n.op_id == "Range" else None
    if start and g.values[start].const is None:
        syms = sorted(set(syms) | dims.symbols_of(plan.symbolic[start]))
    env = {s: tirx.Var(s, "int64") for s in syms}

    def texpr_shape(shape):
        return [_expr(d, env) for d in shape]

    placeholders = {}
    for i, x in enumerate(step.inputs):
        v = g.values[x]
        placeholders[x] = te.placeholder(texpr_shape(v.shape), _te_dtype(v.dtype), name=f"in{i}")
    out_values = [g.values[x] for x in step.outputs]
    out_shapes = [texpr_shape(v.shape) for v in out_values]
    out_dtypes = [_te_dtype(v.dtype) for v in out_values]
    scalar_syms: list = []
    if step.materialize:
        outs = [te_ops.materialize([_expr(d, env) for d in step.materialize], out_dtypes[0],
                                   scalar=len(out_shapes[0]) == 0)]
        kind = "injective"
    elif step.group:
        outs = [_fused_chain(g, step, placeholders, env)]
        kind = "fused"
    else:
        operands = []
        for i, x in enumerate(n.inputs):
            x = step.stored.get(x, x)
            if x in placeholders:
                operands.append(placeholders[x])
            elif i in step.inline:
                operands.append(te_ops.Inline(step.inline[i]))
            else:
                operands.append(None)
        consts = {i: g.values[x].const for i, x in enumerate(n.inputs) if x and g.values[x].const is not None}
        style, builder = _BUILDERS.get(n.op_id, (None, None))
        if builder is None:
            raise NotImplementedError(f"op {n.op_id} has no TE lowering yet")
        data = list(operands)
        while data and data[-1] is None:
            data.pop()
        if n.op_id == "qcompile.Attention" and plan.gpu:
            # a GPU keeps a row's scores on chip: a static size (Metal has no other), the plan's bound
            keys = dims.upper_bound(g.values[step.inputs[1]].shape[2], plan.bounds)
            outs = builder(n, data, out_shapes, out_dtypes, max_keys=keys)
        elif style == "plain":
            outs = builder(n, data, out_shapes, out_dtypes)
        elif style == "consts":
            outs = builder(n, [data[0]], out_shapes, out_dtypes, consts)
        else:   # range: a symbolic start comes in as a scalar
            scalars = {0: _expr(plan.symbolic[start][0], env)} if start and g.values[start].const is None else {}
            outs = builder(n, [], out_shapes, out_dtypes, consts, scalars)
        kind = _kind(n.op_id)
    bare = {str(d) for x in step.inputs + step.outputs for d in (g.values[x].shape or ()) if isinstance(d, str)
            and dims.parse(d).is_symbol}
    scalar_syms = [s for s in sorted(env) if s not in bare]
    args = [placeholders[x] for x in step.inputs] + list(outs[:len(step.outputs)]) + [env[s] for s in scalar_syms]
    func = te.create_prim_func(args).with_attr("global_symbol", name)
    return Kernel(name, func, kind, scalar_syms)


def _fused_chain(g, step: Step, placeholders: dict, env: dict):
    """TE of an elementwise chain: each member's output feeds the next without a buffer."""
    produced: dict = {}
    for node, inline in step.group:
        operands = []
        for i, x in enumerate(node.inputs):
            if x in produced:
                operands.append(produced[x])
            elif x in placeholders:
                operands.append(placeholders[x])
            elif i in inline:
                operands.append(te_ops.Inline(inline[i]))
            elif x and g.values[x].const is not None:
                operands.append(te_ops.Inline(g.values[x].const))
            else:
                operands.append(None)
        while operands and operands[-1] is None:
            operands.pop()
        out = g.values[node.outputs[0]]
        shape = [_expr(d, env) for d in out.shape]
        dtype = _te_dtype(out.dtype)
        produced[node.outputs[0]] = te_ops.elementwise(node, operands, [shape], [dtype])[0]
    return produced[step.outputs[0]]


def _kind(op_id: str) -> str:
    if op_id == "qcompile.Attention":
        return "attention"
    if op_id == "qcompile.Rotary":
        return "injective"
    if op_id == "qcompile.Hadamard":
        return "rows"
    if op_id == "qcompile.QuantizeRowsTIR":
        return "quantize_rows"
    if op_id == "qcompile.QLinearTIR":
        return "qgemm"
    if op_id.startswith("qcompile."):
        return "extern"
    if op_id in ("MatMul", "Gemm"):
        return "matmul"
    if op_id.startswith("Reduce"):
        return "reduce"
    if op_id in ("Softmax", "LayerNormalization", "RMSNormalization", "SimplifiedLayerNormalization"):
        return "multi"
    return "injective"


__all__ = ["build_kernels", "supported", "Kernel"]
