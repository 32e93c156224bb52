"""IR op -> TE compute, with symbolic shapes. One builder per op family.

A builder receives the node, its operands (te.Tensor, or a callable for a constant folded into
the kernel) and the output shapes as TIR expressions, and returns the output tensors. Semantics
follow the reference interpreter (`qcompile/ir/interpret`), which the tests compare against.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from tvm import te, tirx

from ...ir.slicing import onnx_slice


class Inline:
    """A constant folded into kernel code: broadcasts like a tensor of its shape."""

    def __init__(self, array: np.ndarray):
        self.array = array
        self.shape = tuple(int(d) for d in array.shape)
        self.dtype = str(array.dtype) if array.dtype != np.bool_ else "bool"

    def __call__(self, *idx):
        return tirx.const(self.array.reshape(-1)[0].item(), self.dtype)


def _is_one(d) -> bool:
    return isinstance(d, (int, tirx.IntImm)) and int(d) == 1


def bcast(t, out_shape) -> Callable:
    """Index function reading operand t broadcast (numpy rules) to out_shape."""
    off = len(out_shape) - len(t.shape)

    def get(*idx):
        sub = [0 if _is_one(t.shape[i]) and not _is_one(out_shape[off + i]) else idx[off + i]
               for i in range(len(t.shape))]
        return t(*sub)
    return get


def dtype_of(t) -> str:
    return t.dtype


# -- elementwise --------------------------------------------------------------------------------

def _pow(a, b):
    if isinstance(b, tirx.FloatImm) and b.value == 2.0:
        return a * a
    if isinstance(b, tirx.FloatImm) and b.value == 0.5:
        return tirx.sqrt(a)
    return tirx.power(a, b)


def _div(a, b, dt):
    return tirx.truncdiv(a, b) if "int" in dt else a / b


def _keep_nan(pick, a, b):
    """pick(a, b) (max or min), or the NaN operand, as onnxruntime's Max/Min and numpy do: TVM's max
    is `a > b ? a : b` on CPUs (a NaN first operand is dropped) and fmaxf on GPUs (either is).
    isnan, not a != a: TVM's simplifier folds the latter to false."""
    return tirx.Select(tirx.isnan(a), a, tirx.Select(tirx.isnan(b), b, pick(a, b)))


def _nan_propagating(pick):
    return lambda a, b, dt: _keep_nan(pick, a, b) if "float" in dt else pick(a, b)


def _nan_reducer(pick, identity, name):
    """te.max/te.min that end in NaN when any element is NaN, as numpy's do (onnxruntime's keeps
    one only when it comes first in the row)."""
    return te.comm_reducer(lambda a, b: _keep_nan(pick, a, b), identity, name=name)


_NAN_REDUCERS = {"ReduceMax": _nan_reducer(tirx.max, lambda t: tirx.min_value(t), "nan_max"),
                 "ReduceMin": _nan_reducer(tirx.min, lambda t: tirx.max_value(t), "nan_min")}


def _relu(x, dt):
    return tirx.Select(x < tirx.const(0, dt), tirx.const(0, dt), x)     # NaN < 0 is false: NaN stays


_BINARY = {
    "Add": lambda a, b, dt: a + b, "Sub": lambda a, b, dt: a - b, "Mul": lambda a, b, dt: a * b, "Div": _div,
    "Pow": lambda a, b, dt: _pow(a, b), "Max": _nan_propagating(tirx.max), "Min": _nan_propagating(tirx.min),
    "Equal": lambda a, b, dt: a == b, "Less": lambda a, b, dt: a < b, "LessOrEqual": lambda a, b, dt: a <= b,
    "Greater": lambda a, b, dt: a > b, "GreaterOrEqual": lambda a, b, dt: a >= b,
    "And": lambda a, b, dt: tirx.And(a, b), "Or": lambda a, b, dt: tirx.Or(a, b),
}


def _gelu(x, approximate):
    if approximate == "tanh":
        return 0.5 * x * (1 + tirx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x * x * x)))
    return 0.5 * x * (1 + tirx.erf(x * (1 / math.sqrt(2))))


_UNARY = {
    "Neg": lambda n, x, dt: -x, "Abs": lambda n, x, dt: tirx.abs(x), "Exp": lambda n, x, dt: tirx.exp(x),
    "Log": lambda n, x, dt: tirx.log(x), "Sqrt": lambda n, x, dt: tirx.sqrt(x),
    "Reciprocal": lambda n, x, dt: tirx.const(1, dt) / x, "Tanh": lambda n, x, dt: tirx.tanh(x),
    "Sigmoid": lambda n, x, dt: tirx.sigmoid(x), "Erf": lambda n, x, dt: tirx.erf(x),
    "Sin": lambda n, x, dt: tirx.sin(x), "Cos": lambda n, x, dt: tirx.cos(x),
    "Relu": lambda n, x, dt: _relu(x, dt),
    "Floor": lambda n, x, dt: tirx.floor(x), "Ceil": lambda n, x, dt: tirx.ceil(x),
    "Not": lambda n, x, dt: tirx.Not(x),
    "Gelu": lambda n, x, dt: _gelu(x, n.attrs.get("approximate", "none")),
    "Softplus": lambda n, x, dt: tirx.log(1 + tirx.exp(x)),
    "LeakyRelu": lambda n, x, dt: tirx.Select(x >= 0, x, x * tirx.const(n.attrs.get("alpha", 0.01), dt)),
}


def elementwise(node, ins, out_shapes, out_dtypes):
    shape = out_shapes[0]
    op = node.op
    if op in _BINARY:
        a, b = (bcast(t, shape) for t in ins)
        fn = _BINARY[op]
        dt = str(ins[0].dtype)
        return [te.compute(shape, lambda *i: fn(a(*i), b(*i), dt).astype(out_dtypes[0]), name="y")]
    if op == "Where":
        c, x, y = (bcast(t, shape) for t in ins)
        return [te.compute(shape, lambda *i: tirx.Select(c(*i).astype("bool"), x(*i), y(*i)), name="y")]
    if op == "Cast":
        x = bcast(ins[0], shape)
        return [te.compute(shape, lambda *i: x(*i).astype(out_dtypes[0]), name="y")]
    if op == "Clip":
        x = bcast(ins[0], shape)
        lo = bcast(ins[1], shape) if len(ins) > 1 and ins[1] is not None else None
        hi = bcast(ins[2], shape) if len(ins) > 2 and ins[2] is not None else None

        def clip(*i):
            v = x(*i)
            if lo is not None:
                v = tirx.max(v, lo(*i))
            if hi is not None:
                v = tirx.min(v, hi(*i))
            return tirx.Select(tirx.isnan(x(*i)), x(*i), v) if "float" in str(ins[0].dtype) else v    # NaN stays NaN
        return [te.compute(shape, clip, name="y")]
    fn = _UNARY[op]
    x = bcast(ins[0], shape)
    return [te.compute(shape, lambda *i: fn(node, x(*i), str(ins[0].dtype)), name="y")]


ELEMENTWISE_OPS = set(_BINARY) | set(_UNARY) | {"Where", "Cast", "Clip"}


# -- quantization (ONNX QuantizeLinear / DequantizeLinear) ---------------------------------------

_QRANGE = {"int8": (-128, 127), "uint8": (0, 255)}


def _qparam(node, t, shape):
    """Index function of a Q/DQ scale or zero point: one value (per tensor) or a 1-D tensor along
    the node's `axis` (per axis). Blocked quantization (opset 21 block_size) has no kernel."""
    if t is None:
        return None
    if node.attrs.get("block_size"):
        raise NotImplementedError(f"{node.op} with block_size (blocked quantization) of run-time values")
    if isinstance(t, Inline) or all(_is_one(d) for d in t.shape):
        zeros = [0] * len(t.shape)
        return lambda *i: t(*zeros)
    if len(t.shape) != 1:
        raise NotImplementedError(f"{node.op} with a rank-{len(t.shape)} scale")
    axis = int(node.attrs.get("axis", 1)) % len(shape)
    return lambda *i: t[i[axis]]


def quantize_linear(node, ins, out_shapes, out_dtypes):
    """y = saturate(round_half_even(x / scale) + zero_point), float32 math as the interpreter's."""
    shape, dt = out_shapes[0], out_dtypes[0]
    if dt not in _QRANGE:
        raise NotImplementedError(f"QuantizeLinear to {dt} (kernels exist for int8 and uint8)")
    x = bcast(ins[0], shape)
    scale, zp = _qparam(node, ins[1], shape), _qparam(node, ins[2] if len(ins) > 2 else None, shape)
    lo, hi = (tirx.const(v, "float32") for v in _QRANGE[dt])

    def q(*i):
        v = tirx.nearbyint(x(*i).astype("float32") / scale(*i).astype("float32"))
        if zp is not None:
            v = v + zp(*i).astype("float32")
        return tirx.max(tirx.min(v, hi), lo).astype(dt)
    return [te.compute(shape, q, name="quantize")]


def dequantize_linear(node, ins, out_shapes, out_dtypes):
    """y = (x - zero_point) * scale in float32, then the output type."""
    shape, dt = out_shapes[0], out_dtypes[0]
    x = bcast(ins[0], shape)
    scale, zp = _qparam(node, ins[1], shape), _qparam(node, ins[2] if len(ins) > 2 else None, shape)

    def dq(*i):
        v = x(*i).astype("float32")
        if zp is not None:
            v = v - zp(*i).astype("float32")
        return (v * scale(*i).astype("float32")).astype(dt)
    return [te.compute(shape, dq, name="dequantize")]


# -- linear algebra -----------------------------------------------------------------------------

def matmul(node, ins, out_shapes, out_dtypes):
    a, b = ins
    out = out_shapes[0]
    k_dim = a.shape[-1]
    k = te.reduce_axis((0, k_dim), name="k")
    a2 = len(a.shape) >= 2
    b2 = len(b.shape) >= 2
    batch_rank = len(out) - (1 if a2 else 0) - (1 if b2 else 0)

    def batch_of(t, idx):
        """t's batch indices for output index idx (numpy broadcasting over the batch dims)."""
        off = batch_rank - (len(t.shape) - 2)
        return [0 if _is_one(t.shape[i]) and not _is_one(out[off + i]) else idx[off + i]
                for i in range(len(t.shape) - 2)]

    def read_a(idx, kk):
        return a(*batch_of(a, idx), idx[batch_rank], kk) if a2 else a[kk]

    def read_b(idx, kk):
        return b(*batch_of(b, idx), kk, idx[-1]) if b2 else b[kk]

    return [te.compute(out, lambda *i: te.sum(read_a(i, k) * read_b(i, k), axis=k), name="matmul")]


def gemm(node, ins, out_shapes, out_dtypes):
    a, b = ins[0], ins[1]
    c = ins[2] if len(ins) > 2 else None
    ta, tb = node.attrs.get("transA", 0), node.attrs.get("transB", 0)
    alpha, beta = node.attrs.get("alpha", 1.0), node.attrs.get("beta", 1.0)
    k = te.reduce_axis((0, a.shape[0] if ta else a.shape[1]), name="k")
    out = out_shapes[0]
    prod = te.compute(out, lambda i, j: te.sum((a[k, i] if ta else a[i, k]) * (b[j, k] if tb else b[k, j]), axis=k),
                      name="matmul")
    if c is None and alpha == 1.0:
        return [prod]
    cc = bcast(c, out) if c is not None else None
    return [te.compute(out, lambda i, j: prod[i, j] * alpha + (cc(i, j) * beta if cc else 0), name="y")]


# -- reductions and normalization ---------------------------------------------------------------

def _axes(node, rank, consts):
    axes = consts.get(1)
    if axes is None or np.size(axes) == 0:
        return None if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))


def reduce(node, ins, out_shapes, out_dtypes, consts):
    x = ins[0]
    rank = len(x.shape)
    axes = _axes(node, rank, consts)
    keep = node.attrs.get("keepdims", 1)
    rdom = {a: te.reduce_axis((0, x.shape[a]), name=f"r{a}") for a in axes}

    def index(i):
        it = iter(i)
        sub = []
        for d in range(rank):
            if d in rdom:
                sub.append(rdom[d])
                if keep:
                    next(it)
            else:
                sub.append(next(it))
        return sub

    raxes = list(rdom.values())
    op = node.op
    if op in ("ReduceSum", "ReduceMean"):
        total = te.compute(out_shapes[0], lambda *i: te.sum(x(*index(i)), axis=raxes), name="sum")
        if op == "ReduceSum":
            return [total]
        count = 1
        for a in axes:
            count = count * x.shape[a]
        return [te.compute(out_shapes[0], lambda *i: total(*i) / count.astype(x.dtype)
                           if not isinstance(count, int) else total(*i) / float(count), name="mean")]
    if op in ("ReduceMax", "ReduceMin"):
        reducer = _NAN_REDUCERS[op] if "float" in str(x.dtype) else te.max if op == "ReduceMax" else te.min
        return [te.compute(out_shapes[0], lambda *i: reducer(x(*index(i)), axis=raxes), name=op[6:].lower())]
    raise NotImplementedError(op)


def softmax(node, ins, out_shapes, out_dtypes):
    x = ins[0]
    rank = len(x.shape)
    axis = node.attrs.get("axis", -1) % rank
    shape = out_shapes[0]
    red_shape = [d for i, d in enumerate(shape) if i != axis]

    def full(i, r):
        return list(i[:axis]) + [r] + list(i[axis:])

    r1 = te.reduce_axis((0, x.shape[axis]), name="r1")
    mx = te.compute(red_shape, lambda *i: te.max(x(*full(i, r1)), axis=r1), name="mx")
    ex = te.compute(shape, lambda *i: tirx.exp(x(*i) - mx(*(i[:axis] + i[axis + 1:]))), name="ex")
    r2 = te.reduce_axis((0, x.shape[axis]), name="r2")
    sm = te.compute(red_shape, lambda *i: te.sum(ex(*full(i, r2)), axis=r2), name="sm")
    return [te.compute(shape, lambda *i: ex(*i) / sm(*(i[:axis] + i[axis + 1:])), name="softmax")]


def layer_norm(node, ins, out_shapes, out_dtypes):
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    rank = len(x.shape)
    axis = node.attrs.get("axis", -1) % rank
    eps = node.attrs.get("epsilon", 1e-5)
    n = 1
    for d in x.shape[axis:]:
        n = n * d
    lead = x.shape[:axis]
    rms = node.op != "LayerNormalization"

    def tail_axes(tag):
        return [te.reduce_axis((0, d), name=f"{tag}{i}") for i, d in enumerate(x.shape[axis:])]

    inv_n = tirx.const(1.0, "float32") / tirx.Cast("float32", n) if not isinstance(n, int) else 1.0 / n
    if rms:
        r = tail_axes("q")
        ms = te.compute(lead, lambda *i: te.sum(x(*i, *r) * x(*i, *r), axis=r), name="sq")
        inv = te.compute(lead, lambda *i: tirx.rsqrt(ms(*i) * inv_n + eps), name="inv")
        sc = bcast(scale, x.shape)
        return [te.compute(x.shape, lambda *i: x(*i) * inv(*i[:axis]) * sc(*i), name="y")]
    r = tail_axes("m")
    total = te.compute(lead, lambda *i: te.sum(x(*i, *r), axis=r), name="total")
    mean = te.compute(lead, lambda *i: total(*i) * inv_n, name="mean")
    r2 = tail_axes("v")
    sq = te.compute(lead, lambda *i: te.sum((x(*i, *r2) - mean(*i)) * (x(*i, *r2) - mean(*i)), axis=r2),
                    name="sqdev")
    inv = te.compute(lead, lambda *i: tirx.rsqrt(sq(*i) * inv_n + eps), name="inv")
    sc = bcast(scale, x.shape)
    bs = bcast(bias, x.shape) if bias is not None else None
    return [te.compute(x.shape, lambda *i: (x(*i) - mean(*i[:axis])) * inv(*i[:axis]) * sc(*i)
                       + (bs(*i) if bs else 0), name="y")]


def hadamard(node, ins, out_shapes, out_dtypes):
    """qcompile.Hadamard: x @ (mix ⊗ Sylvester(p)) on the last axis: log2(p) butterfly stages over
    each block of p, then the small [m, m] mix across the m blocks."""
    x, mix = ins[0], ins[1]
    shape = out_shapes[0]
    n, m = int(x.shape[-1]), int(mix.shape[0])
    p = n // m
    def butterfly(prev, h):
        def stage(*i):
            last = i[-1]          # pairs (j, j + h) inside aligned blocks of 2h: both always in range
            a = prev(*i[:-1], tirx.bitwise_and(last, tirx.const(~h, "int64")))
            b = prev(*i[:-1], tirx.bitwise_or(last, tirx.const(h, "int64")))
            return tirx.Select(tirx.bitwise_and(last, tirx.const(h, "int64")) != 0, a - b, a + b)
        return stage

    cur, h = x, 1
    while h < p:
        cur, h = te.compute(shape, butterfly(cur, h), name=f"fwht{h}"), h * 2
    r = te.reduce_axis((0, m), name="a")
    return [te.compute(shape, lambda *i: te.sum(cur(*i[:-1], r * p + i[-1] % p) * mix(r, i[-1] // p), axis=r),
                       name="hadamard")]


def rotary(node, ins, out_shapes, out_dtypes):
    """qcompile.Rotary: x * cos + rotate_half(x) * sin; the partner of lane i is lane (i + d/2) % d,
    negated in the first half, so no index leaves the row."""
    x, shape = ins[0], out_shapes[0]
    cos, sin = bcast(ins[1], shape), bcast(ins[2], shape)
    d = int(x.shape[-1])

    def f(*i):
        last = i[-1]
        partner = x(*i[:-1], (last + d // 2) % d)
        rotated = tirx.Select(last < d // 2, -partner, partner)
        return x(*i) * cos(*i) + rotated * sin(*i)
    return [te.compute(shape, f, name="rotary")]


def attention(node, ins, out_shapes, out_dtypes, max_keys: int | None = None):
    """qcompile.Attention: softmax(q kᵀ · scale + mask) v per row (b, h, s); query head h reads
    key/value head h // group, so grouped-query K/V are never expanded. max_keys: the key count's
    bound, which sizes the row of scores statically (min(keys, max_keys): the same at run time,
    where the executor refuses longer rows)."""
    q, k, v = ins[:3]
    mask = bcast(ins[3], out_shapes[0][:3] + [k.shape[2]]) if len(ins) > 3 and ins[3] is not None else None
    group = int(q.shape[1]) // int(k.shape[1])
    t_len, scale = k.shape[2], tirx.const(node.attrs["scale"], "float32")
    d = te.reduce_axis((0, q.shape[3]), name="d")
    rows = out_shapes[0][:3]

    dot_len = tirx.min(t_len, tirx.IntImm(str(t_len.ty), max_keys)) if max_keys and not isinstance(t_len, int) else t_len
    dot = te.compute(rows + [dot_len], lambda b, h, s, t: te.sum(q[b, h, s, d] * k[b, h // group, t, d], axis=d),
                     name="dot")
    score = te.compute(rows + [t_len], lambda b, h, s, t: dot[b, h, s, t] * scale + mask(b, h, s, t) if mask
                       else dot[b, h, s, t] * scale, name="score")
    r1 = te.reduce_axis((0, t_len), name="r1")
    mx = te.compute(rows, lambda b, h, s: te.max(score[b, h, s, r1], axis=r1), name="mx")
    ex = te.compute(rows + [t_len], lambda b, h, s, t: tirx.exp(score[b, h, s, t] - mx[b, h, s]), name="ex")
    r2 = te.reduce_axis((0, t_len), name="r2")
    total = te.compute(rows, lambda b, h, s: te.sum(ex[b, h, s, r2], axis=r2), name="total")
    r3 = te.reduce_axis((0, t_len), name="r3")
    acc = te.compute(out_shapes[0], lambda b, h, s, j: te.sum(ex[b, h, s, r3] * v[b, h // group, r3, j], axis=r3),
                     name="acc")
    return [te.compute(out_shapes[0], lambda b, h, s, j: acc[b, h, s, j] / total[b, h, s], name="attn")]


# -- data movement ------------------------------------------------------------------------------

def transpose(node, ins, out_shapes, out_dtypes):
    x = ins[0]
    perm = node.attrs.get("perm") or list(reversed(range(len(x.shape))))
    inverse = [perm.index(d) for d in range(len(perm))]
    return [te.compute(out_shapes[0], lambda *i: x(*[i[inverse[d]] for d in range(len(perm))]), name="t")]


def concat(node, ins, out_shapes, out_dtypes):
    shape = out_shapes[0]
    axis = node.attrs["axis"] % len(shape)
    parts = [t for t in ins if t is not None]

    offsets = [0]
    for t in parts:
        offsets.append(offsets[-1] + t.shape[axis])

    def read(j, i):
        sub = list(i)
        sub[axis] = i[axis] - offsets[j]
        return parts[j](*sub)

    def pick(*i):
        value = read(len(parts) - 1, i)
        for j in range(len(parts) - 2, -1, -1):     # earlier parts win below their end offset
            value = tirx.if_then_else(i[axis] < offsets[j + 1], read(j, i), value)
        return value
    return [te.compute(shape, pick, name="concat")]


def slice_(node, ins, out_shapes, out_dtypes, consts):
    x = ins[0]
    rank = len(x.shape)
    starts, ends = (np.asarray(consts[i]).reshape(-1).tolist() for i in (1, 2))
    axes = [int(a) % rank for a in np.asarray(consts[3]).reshape(-1)] if 3 in consts else list(range(len(starts)))
    steps = np.asarray(consts[4]).reshape(-1).tolist() if 4 in consts else [1] * len(starts)
    begin, stride = [0] * rank, [1] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        dim = x.shape[a]
        if isinstance(dim, tirx.IntImm):
            sl = onnx_slice(int(dim), int(s), int(e), int(st))
            begin[a], stride[a] = sl.start, sl.step
        elif s == 0 and st == 1 and e >= 2 ** 62:
            continue      # the whole symbolic axis
        else:
            raise NotImplementedError(f"Slice on symbolic axis {a} with start {s}, end {e}, step {st}")
    return [te.compute(out_shapes[0], lambda *i: x(*[begin[d] + i[d] * stride[d] for d in range(rank)]), name="slice")]


def gather(node, ins, out_shapes, out_dtypes):
    data, idx = ins
    axis = node.attrs.get("axis", 0) % len(data.shape)
    q = len(idx.shape)
    dim = data.shape[axis]

    def read(*i):
        raw = idx(*i[axis:axis + q]).astype("int64")
        wrapped = tirx.Select(raw < 0, raw + dim, raw)
        safe = tirx.max(tirx.min(wrapped, dim - 1), 0)     # out-of-range ids never read out of bounds
        return data(*i[:axis], safe, *i[axis + q:]).astype(out_dtypes[0])    # bf16 tables widen here
    return [te.compute(out_shapes[0], read, name="gather")]


def expand(node, ins, out_shapes, out_dtypes):
    x = bcast(ins[0], out_shapes[0])
    return [te.compute(out_shapes[0], lambda *i: x(*i), name="expand")]


def range_(node, ins, out_shapes, out_dtypes, consts, scalars):
    start = scalars.get(0, None)
    if start is None:
        start = tirx.const(np.asarray(consts[0]).reshape(-1)[0].item(), out_dtypes[0])
    delta = tirx.const(np.asarray(consts[2]).reshape(-1)[0].item(), out_dtypes[0])
    return [te.compute(out_shapes[0], lambda i: start.astype(out_dtypes[0]) + i.astype(out_dtypes[0]) * delta,
                       name="range")]


def trilu(node, ins, out_shapes, out_dtypes, consts):
    x = ins[0]
    k = int(np.asarray(consts[1]).reshape(-1)[0]) if 1 in consts else 0
    upper = node.attrs.get("upper", 1)
    zero = tirx.const(0, x.dtype)

    def keep(*i):
        r, c = i[-2], i[-1]
        cond = (c - r >= k) if upper else (c - r <= k)
        return tirx.Select(cond, x(*i), zero)
    return [te.compute(out_shapes[0], keep, name="trilu")]


def constant_of_shape(node, ins, out_shapes, out_dtypes):
    value = node.attrs.get("value")
    v = np.asarray(value).reshape(-1)[0].item() if value is not None else 0.0
    return [te.compute(out_shapes[0], lambda *i: tirx.const(v, out_dtypes[0]), name="fill")]


def materialize(values, dtype, scalar: bool = False):
    """A symbolic vector (dims known only at run time) written out as a tensor; `scalar`: one
    dim held by a rank-0 value (an exporter's `sym_size`)."""
    if scalar:
        return te.compute((), lambda: tirx.Cast(dtype, values[0]), name="dims")

    def pick(i):
        out = tirx.const(0, dtype)
        for j, v in reversed(list(enumerate(values))):
            out = tirx.Select(i == j, tirx.Cast(dtype, v), out)
        return out
    return te.compute((len(values),), pick, name="dims")
