"""Element type and shape of each op's outputs, symbolic dims included.

A rule returns None for what it cannot know (a dim, a whole shape); callers keep what they had.
Symbolic dims combine conservatively: a broadcast of "seq" with 1 is "seq", of "seq" with
"past" is unknown (None), and a sum along a concat axis is written out ("past+seq").
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidModelError
from . import dtypes
from .graph import Dim, Graph, Node, Shape
from .slicing import slice_length
from .window import window

_BOOL_OPS = {"Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Not", "And", "Or", "Xor",
             "IsNaN", "IsInf"}
_INT64_OPS = {"Shape", "Size", "ArgMax", "ArgMin"}
_SAME_SHAPE = {"Abs", "Neg", "Relu", "Sign", "Not", "IsNaN", "IsInf", "Cast", "CastLike", "Identity", "Clip",
               "Softmax", "LogSoftmax", "Hardmax", "QuantizeLinear", "DequantizeLinear", "Trilu", "CumSum",
               "Exp", "Log", "Sqrt", "Reciprocal", "Tanh", "Sigmoid", "Erf", "Sin", "Cos", "Tan", "Asin", "Acos",
               "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Floor", "Ceil", "Round", "Softplus",
               "Softsign", "Gelu", "Elu", "Celu", "Selu", "LeakyRelu", "ThresholdedRelu", "HardSigmoid",
               "HardSwish", "Mish", "BitwiseNot", "LRN", "BatchNormalization", "LayerNormalization",
               "RMSNormalization", "SimplifiedLayerNormalization"}
_BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Equal", "Less", "LessOrEqual", "Greater",
              "GreaterOrEqual", "And", "Or", "Xor", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "BitShift",
              "BitwiseAnd", "BitwiseOr", "BitwiseXor"}


def const_ints(g: Graph, name: str | None) -> list[int] | None:
    if not name or name not in g.values or g.values[name].const is None:
        return None
    return [int(v) for v in np.asarray(g.values[name].const).reshape(-1)]


def broadcast(*shapes: Shape) -> Shape:
    if any(s is None for s in shapes):
        return None
    rank = max(len(s) for s in shapes)
    out: list[Dim] = []
    for i in range(rank):
        dims = [s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0]
        out.append(_broadcast_dim(dims))
    return tuple(out)


def _broadcast_dim(dims: list[Dim]) -> Dim:
    rest = {d for d in dims if d != 1}
    if not rest:
        return 1
    if None in rest:
        return None
    ints = {d for d in rest if isinstance(d, int)}
    if ints:
        return ints.pop() if len(ints) == 1 else None
    return rest.pop() if len(rest) == 1 else None


def add_dims(dims: list[Dim]) -> Dim:
    if any(d is None for d in dims):
        return None
    total = sum(d for d in dims if isinstance(d, int))
    syms = [d for d in dims if isinstance(d, str)]
    if not syms:
        return total
    terms = syms + ([str(total)] if total else [])
    return "+".join(terms)


def output_dtypes(g: Graph, n: Node) -> list:
    def dt(i):
        name = n.input(i)
        return g.values[name].dtype if name else None

    op = n.op if n.domain == "" else n.op_id
    if op in _BOOL_OPS:
        return [dtypes.BOOL]
    if op in _INT64_OPS:
        return [dtypes.INT64]
    if op == "Cast":
        return [dtypes.from_onnx(n.attrs["to"])]
    if op in ("CastLike",):
        return [dt(1)]
    if op == "Where":
        return [dt(1)]
    if op == "ConstantOfShape":
        value = n.attrs.get("value")
        return [dtypes.from_numpy(value.dtype) if value is not None else dtypes.FP32]
    if op == "QuantizeLinear":
        if n.input(2):
            return [dt(2)]
        return [dtypes.from_onnx(n.attrs["output_dtype"]) if n.attrs.get("output_dtype") else dtypes.UINT8]
    if op == "DequantizeLinear":
        return [dtypes.from_onnx(n.attrs["output_dtype"]) if n.attrs.get("output_dtype") else dt(1)]
    if op == "MatMulInteger":
        return [dtypes.INT32]
    if op == "DynamicQuantizeLinear":
        return [dtypes.UINT8, dtypes.FP32, dtypes.UINT8]
    if op == "Dropout":
        return [dt(0), dtypes.BOOL]
    if op == "MaxPool":
        return [dt(0), dtypes.INT64]
    if op == "LayerNormalization":
        return [dt(0), dtypes.FP32, dtypes.FP32]
    if op in ("RMSNormalization", "SimplifiedLayerNormalization", "com.microsoft.SimplifiedLayerNormalization"):
        return [dt(0), dtypes.FP32]
    first = next((dt(i) for i in range(len(n.inputs)) if n.input(i)), None)
    return [first] * len(n.outputs)



# -- symbolic values: small int tensors that hold dims (Shape -> Gather -> Concat -> Reshape) ----

SymValues = dict[str, tuple[Dim, ...]]


def _sym(g: Graph, sv: SymValues, name: str | None) -> tuple[Dim, ...] | None:
    """Elements of a rank<=1 integer value, as dims (ints or symbols), when known."""
    if not name:
        return None
    if name in sv:
        return sv[name]
    v = g.values.get(name)
    if v is not None and v.const is not None and v.const.ndim <= 1 and v.const.dtype.kind in "iu":
        return tuple(int(x) for x in v.const.reshape(-1))
    return None


def _scalar_dim(op: str, a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return {"Add": a + b, "Sub": a - b, "Mul": a * b}.get(op)
    if op == "Add" and a is not None and b is not None:
        return add_dims([a, b])
    if op == "Sub" and isinstance(a, str) and isinstance(b, str) and a.startswith(b + "+"):
        return a[len(b) + 1:]
    if op == "Mul" and 1 in (a, b):
        return b if a == 1 else a
    return None


def propagate_symbolic(g: Graph, n: Node, sv: SymValues) -> None:
    """Record n's output in sv when it is a known vector of dims."""
    op = n.op if n.domain == "" else n.op_id
    out = n.outputs[0] if n.outputs else None
    first = _sym(g, sv, n.input(0))
    result: tuple[Dim, ...] | None = None
    if op == "Shape":
        x = g.values[n.inputs[0]].shape
        if x is not None:
            rank = len(x)
            start, end = n.attrs.get("start", 0), n.attrs.get("end", rank)
            result = tuple(x[slice(start, end)])
    elif op in ("Identity", "Squeeze", "Unsqueeze") and first is not None:
        result = first
    elif op == "Reshape" and first is not None and _sym(g, sv, n.input(1)) in ((-1,), (len(first),)):
        result = first           # a scalar dim made a 1-element vector, as exporters do before Concat
    elif op == "Cast" and first is not None and dtypes.from_onnx(n.attrs["to"]).is_int:
        result = first
    elif op == "Gather" and first is not None and n.attrs.get("axis", 0) == 0:
        idx = _sym(g, sv, n.input(1))
        if idx is not None and all(isinstance(i, int) for i in idx):
            if not all(-len(first) <= i < len(first) for i in idx):
                raise InvalidModelError(f"Gather reads indices {list(idx)} of a shape of rank {len(first)}",
                                        node=n.name, op=n.op)
            result = tuple(first[i] for i in idx)
    elif op == "Concat":
        parts = [_sym(g, sv, n.input(i)) for i in range(len(n.inputs))]
        if all(p is not None for p in parts):
            result = tuple(d for p in parts for d in p)
    elif op == "Slice" and first is not None and not n.input(3) and not n.input(4):
        start, end = _sym(g, sv, n.input(1)), _sym(g, sv, n.input(2))
        if start and end and isinstance(start[0], int) and isinstance(end[0], int):
            result = first[start[0]:end[0]]
    elif op in ("Add", "Sub", "Mul") and first is not None:
        other = _sym(g, sv, n.input(1))
        if other is not None and len(first) == len(other) == 1:
            result = (_scalar_dim(op, first[0], other[0]),)
    if out and result is not None and all(d is not None for d in result):
        sv[out] = result


def _range(g, n, x, sh, sv):
    start, limit, delta = (_sym(g, sv, n.input(i)) for i in range(3))
    if not start or not limit or delta != (1,):
        return (None,)
    start, limit = start[0], limit[0]
    if isinstance(start, int) and isinstance(limit, int):
        return (max(limit - start, 0),)
    if start == 0:
        return (limit,)
    return (_scalar_dim("Sub", limit, start),)


def output_shapes(g: Graph, n: Node, sv: SymValues | None = None) -> list[Shape]:
    """Shapes of n's outputs; None where unknown."""
    def sh(i):
        name = n.input(i)
        return g.values[name].shape if name else None

    op = n.op if n.domain == "" else n.op_id
    x = sh(0)
    if op in _SAME_SHAPE:
        if op == "BatchNormalization" and x is not None and len(n.outputs) > 1:
            return [x] + [(x[1],)] * (len(n.outputs) - 1)      # training mode: running mean, var
        if op == "LayerNormalization" and x is not None:
            axis = n.attrs.get("axis", -1) % len(x)
            stat = tuple(x[:axis]) + (1,) * (len(x) - axis)
            return [x, stat, stat]
        return [x] * len(n.outputs)
    if op in _BROADCAST:
        return [broadcast(*[sh(i) for i in range(len(n.inputs)) if n.input(i)])]
    sv = sv if sv is not None else {}
    if op in _SYMBOLIC_RULES:
        try:
            out = _SYMBOLIC_RULES[op](g, n, x, sh, sv)
        except (TypeError, ValueError, IndexError, ZeroDivisionError):
            out = None
        return out if isinstance(out, list) else [out]
    rule = _RULES.get(op)
    if rule is None:
        return [None] * len(n.outputs)
    try:
        out = rule(g, n, x, sh)
    except (TypeError, ValueError, IndexError, ZeroDivisionError):
        out = None
    return out if isinstance(out, list) else [out]


def _inner_dims_agree(n, a, b, ka, kb) -> None:
    """A product whose inner dims are both known and differ is a malformed model (a kernel would
    read past one operand)."""
    if isinstance(ka, int) and isinstance(kb, int) and ka != kb:
        raise InvalidModelError(f"{n.op} multiplies {tuple(a)} by {tuple(b)}: the inner dims {ka} and {kb} differ",
                                node=n.name, op=n.op)


def _matmul(g, n, a, sh):
    b = sh(1)
    if a is None or b is None:
        return None
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if n.op == "MatMul" and len(a2) >= 2 and len(b2) >= 2:
        _inner_dims_agree(n, a, b, a2[-1], b2[-2])
    batch = broadcast(a2[:-2], b2[:-2])
    if batch is None:
        return None
    out = batch + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _gemm(g, n, a, sh):
    b = sh(1)
    if a is None or b is None:
        return None
    m = a[1] if n.attrs.get("transA", 0) else a[0]
    if len(a) == 2 and len(b) == 2:
        _inner_dims_agree(n, a, b, a[0] if n.attrs.get("transA", 0) else a[1], b[1] if n.attrs.get("transB", 0) else b[0])
    k = b[0] if n.attrs.get("transB", 0) else b[1]
    return (m, k)


def _transpose(g, n, x, sh):
    if x is None:
        return None
    perm = n.attrs.get("perm") or list(reversed(range(len(x))))
    return tuple(x[p] for p in perm)


def _reduce(g, n, x, sh):
    if x is None:
        return None
    axes = const_ints(g, n.input(1)) if n.input(1) else []
    if n.input(1) and axes is None:
        return None
    if not axes:
        if n.attrs.get("noop_with_empty_axes", 0):
            return x
        axes = list(range(len(x)))
    axes = {a % len(x) for a in axes}
    keep = n.attrs.get("keepdims", 1)
    return tuple(1 if i in axes else d for i, d in enumerate(x) if keep or i not in axes)


def _arg(g, n, x, sh):
    if x is None:
        return None
    axis = n.attrs.get("axis", 0) % len(x)
    keep = n.attrs.get("keepdims", 1)
    return tuple(1 if i == axis else d for i, d in enumerate(x) if keep or i != axis)


def _shape(g, n, x, sh):
    if x is None:
        return None
    rank = len(x)
    start, end = n.attrs.get("start", 0), n.attrs.get("end", rank)
    start = min(max(start + rank if start < 0 else start, 0), rank)
    end = min(max(end + rank if end < 0 else end, 0), rank)
    return (max(end - start, 0),)


def _gather(g, n, x, sh):
    idx = sh(1)
    if x is None or idx is None:
        return None
    axis = n.attrs.get("axis", 0) % len(x)
    return tuple(x[:axis]) + tuple(idx) + tuple(x[axis + 1:])


def _unsqueeze(g, n, x, sh):
    axes = const_ints(g, n.input(1))
    if x is None or axes is None:
        return None
    rank = len(x) + len(axes)
    axes = {a % rank for a in axes}
    it = iter(x)
    return tuple(1 if i in axes else next(it) for i in range(rank))


def _squeeze(g, n, x, sh):
    if x is None:
        return None
    if not n.input(1):
        return None if any(not isinstance(d, int) for d in x) else tuple(d for d in x if d != 1)
    axes = const_ints(g, n.input(1))
    if axes is None:
        return None
    axes = {a % len(x) for a in axes}
    return tuple(d for i, d in enumerate(x) if i not in axes)


def _concat(g, n, x, sh):
    shapes = [sh(i) for i in range(len(n.inputs)) if n.input(i)]
    if any(s is None for s in shapes):
        return None
    axis = n.attrs["axis"] % len(shapes[0])
    out = list(shapes[0])
    out[axis] = add_dims([s[axis] for s in shapes])
    for i in range(len(out)):
        if i != axis:
            out[i] = _broadcast_dim([s[i] for s in shapes]) if len({s[i] for s in shapes}) > 1 else out[i]
    return tuple(out)


def _reshape(g, n, x, sh, sv):
    target = _sym(g, sv, n.input(1))
    if target is None:
        return None
    dims: list[Dim] = []
    for i, d in enumerate(target):
        if d == 0 and not n.attrs.get("allowzero", 0):
            dims.append(x[i] if x is not None and i < len(x) else None)
        else:
            dims.append(d)
    if -1 in dims:
        dims[dims.index(-1)] = _infer_minus_one(x, [d for d in dims if d != -1])
    return tuple(dims)


def _infer_minus_one(x: Shape, known: list[Dim]) -> Dim:
    """The -1 of a reshape: elements of x over the known target dims, cancelling equal symbols."""
    if x is None or None in x or None in known:
        return None
    numer = [d for d in x if isinstance(d, str)]
    denom = [d for d in known if isinstance(d, str)]
    for d in list(denom):
        if d in numer:
            numer.remove(d)
            denom.remove(d)
    num_int = math.prod(d for d in x if isinstance(d, int))
    den_int = math.prod(d for d in known if isinstance(d, int))
    if denom or den_int == 0 or num_int % den_int:
        return None
    ratio = num_int // den_int
    if not numer:
        return ratio
    return numer[0] if len(numer) == 1 and ratio == 1 else None


def _expand(g, n, x, sh, sv):
    target = _sym(g, sv, n.input(1))
    return broadcast(x, tuple(target)) if target is not None else None


def _constant_of_shape(g, n, x, sh, sv):
    target = _sym(g, sv, n.input(0))
    return tuple(target) if target is not None else None


def _slice(g, n, x, sh):
    starts, ends = const_ints(g, n.input(1)), const_ints(g, n.input(2))
    axes = const_ints(g, n.input(3)) if n.input(3) else None
    steps = const_ints(g, n.input(4)) if n.input(4) else None
    if x is None or starts is None or ends is None or (n.input(3) and axes is None) or (n.input(4) and steps is None):
        return None
    axes = [a % len(x) for a in axes] if axes is not None else list(range(len(starts)))
    steps = steps or [1] * len(starts)
    out = list(x)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = x[axis]
        if not isinstance(dim, int):
            out[axis] = dim if (start == 0 and step == 1 and end >= 2 ** 62) else None
            continue
        out[axis] = slice_length(dim, start, end, step)
    return tuple(out)


def _split(g, n, x, sh):
    if x is None:
        return [None] * len(n.outputs)
    axis = n.attrs.get("axis", 0) % len(x)
    sizes = const_ints(g, n.input(1)) if n.input(1) else None
    if sizes is None and n.input(1):
        return [None] * len(n.outputs)      # sizes only known at run time
    if sizes is None:
        if not isinstance(x[axis], int):
            return [None] * len(n.outputs)
        count = len(n.outputs)
        chunk = -(-x[axis] // count)
        sizes = [min(chunk, x[axis] - i * chunk) for i in range(count)]
    return [tuple(x[:axis]) + (s,) + tuple(x[axis + 1:]) for s in sizes]


def _flatten(g, n, x, sh):
    if x is None or not all(isinstance(d, int) for d in x):
        return None
    axis = n.attrs.get("axis", 1)
    axis = axis + len(x) if axis < 0 else axis
    return (math.prod(x[:axis]), math.prod(x[axis:]))


def _gather_nd(g, n, x, sh):
    idx = sh(1)
    if x is None or idx is None or not isinstance(idx[-1], int):
        return None
    b = n.attrs.get("batch_dims", 0)
    return tuple(idx[:-1]) + tuple(x[b + idx[-1]:])


def _matmul_nbits(g, n, x, sh):
    return None if x is None else tuple(x[:-1]) + (n.attrs["N"],)


def _conv(g, n, x, sh):
    w = sh(1)
    if x is None or w is None or not all(isinstance(d, int) for d in x[2:]):
        return None
    geo = window(tuple(x[2:]), n.attrs.get("kernel_shape") or w[2:], n.attrs)
    return (x[0], w[0]) + geo.out


def _pool(g, n, x, sh):
    if x is None or not all(isinstance(d, int) for d in x[2:]):
        return None
    geo = window(tuple(x[2:]), n.attrs["kernel_shape"], n.attrs, bool(n.attrs.get("ceil_mode", 0)))
    shape = tuple(x[:2]) + geo.out
    return [shape] * len(n.outputs)


def _norm_stats(g, n, x, sh):
    if x is None:
        return [None, None]
    axis = n.attrs.get("axis", -1) % len(x)
    return [x, tuple(x[:axis]) + (1,) * (len(x) - axis)]


_RULES = {
    "MatMul": _matmul, "MatMulInteger": _matmul, "Gemm": _gemm, "Transpose": _transpose,
    **{op: _reduce for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
                              "ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp")},
    "ArgMax": _arg, "ArgMin": _arg, "Shape": _shape, "Size": lambda g, n, x, sh: (),
    "Gather": _gather, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze, "Concat": _concat,
    "Slice": _slice, "Split": _split,
    "qcompile.QLinear": lambda g, n, x, sh: None if x is None or sh(1) is None else tuple(x[:-1]) + (sh(1)[-1],),
    "Flatten": _flatten, "GatherND": _gather_nd, "ScatterND": lambda g, n, x, sh: x, "com.microsoft.MatMulNBits": _matmul_nbits,
    "RMSNormalization": _norm_stats, "SimplifiedLayerNormalization": _norm_stats,
    "com.microsoft.SimplifiedLayerNormalization": _norm_stats,
    "DynamicQuantizeLinear": lambda g, n, x, sh: [x, (), ()],
    "Conv": _conv, "MaxPool": _pool, "AveragePool": _pool,
    "GlobalAveragePool": lambda g, n, x, sh: None if x is None else tuple(x[:2]) + (1,) * (len(x) - 2),
    "GlobalMaxPool": lambda g, n, x, sh: None if x is None else tuple(x[:2]) + (1,) * (len(x) - 2),
    "Dropout": lambda g, n, x, sh: [x, x],
    # [b, q_heads, s, d] x [b, kv_heads, t, d] x [b, kv_heads, t, dv] -> [b, q_heads, s, dv]
    "qcompile.Rotary": lambda g, n, x, sh: x,
    "qcompile.Hadamard": lambda g, n, x, sh: x,
    "qcompile.Attention": lambda g, n, x, sh: None if x is None or sh(2) is None else tuple(x[:-1]) + (sh(2)[-1],),
}


_SYMBOLIC_RULES = {"Reshape": _reshape, "Expand": _expand, "ConstantOfShape": _constant_of_shape,
                   "Range": _range}


def derived_types(g: Graph, n: Node, sv: SymValues):
    """(value, dtype, shape) that the op rules derive for each present output of n."""
    dts = output_dtypes(g, n)
    shapes = output_shapes(g, n, sv)
    for i, name in enumerate(n.outputs):
        if name:
            yield g.values[name], dts[i] if i < len(dts) else None, shapes[i] if i < len(shapes) else None


def fill_types(g: Graph, overwrite: bool = False) -> int:
    """Set missing (or, with overwrite, all derivable) dtypes and shapes; return how many changed."""
    changed = 0
    sv: SymValues = {}
    for n in g.nodes:
        for v, dt, shape in derived_types(g, n, sv):
            if dt is not None and (v.dtype is None or overwrite) and v.dtype != dt:
                v.dtype, changed = dt, changed + 1
            if shape is not None and (v.shape is None or overwrite) and v.shape != shape:
                v.shape, changed = _merge(v.shape, shape), changed + 1
        propagate_symbolic(g, n, sv)
    return changed


def _merge(old: Shape, new: Shape) -> Shape:
    """Prefer concrete dims: a rule's None never erases what was known."""
    if old is None or len(old) != len(new):
        return new
    return tuple(o if nw is None else nw for o, nw in zip(old, new))
