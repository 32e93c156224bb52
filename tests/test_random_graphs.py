"""Random small ONNX graphs run the same in onnxruntime and in our frontend + reference interpreter.

A hypothesis strategy builds a random DAG of 1..8 ops with onnx.helper (opset 13, 17 or 18, each
with its IR version): Relu Neg Abs Exp Tanh Sigmoid Sqrt Erf; Add Sub Mul Div Max Min Pow with
numpy broadcasting; MatMul (batched, 1-D operands); Gemm (transA/transB, alpha/beta, optional C);
Reshape (0, -1); Transpose; Unsqueeze/Squeeze; Concat; Slice (negative and out-of-range indices,
negative steps, optional axes/steps); Softmax; ReduceMean/Sum/Max (keepdims, no or empty axes;
axes as an attribute before opset 18); Where(Less(a, b), a, b); Cast fp32->fp16->fp32; Expand;
Gather (int64 or int32 constant indices, or an int64 graph input, negative indices, index ranks
0..2); zero-size tensors (an empty Slice or an input with a 0 dim, through an elementwise op,
concatenated back, sometimes a graph output). Operands are graph inputs, initializers or earlier
results; axes are often negative. A second test gives every input a symbolic first dim ("batch") and runs
one model at two batch sizes.

Every value's shape is tracked symbolically, so each graph is valid by construction (the ONNX
checker with strict shape inference must accept it, and ORT must return the declared output
shapes). The model runs in onnxruntime (CPU, graph optimizations off) and through `from_proto`
+ `run`; every output must agree in shape, dtype and value.

Besides the shape, the generator tracks two facts per value so the comparison stays meaningful:
  * `bound`, an upper bound on |x|: guards (Clip, Abs, +0.5) keep Exp/Pow/products finite and
    moderate and keep Div/Pow away from 0 and negative bases;
  * `exact`, whether any IEEE-754 runtime computes it bit for bit (no sums, no transcendental
    functions). The fp32->fp16->fp32 round trip only takes exact values: it rounds away 13
    mantissa bits, so a 1-ulp difference upstream could otherwise become a 1e-3 difference.

Tolerance: rtol=1e-5, atol=1e-5 * max(1, max|ort|). fp32 has eps = 1.2e-7, so 1e-5 leaves about
80 ulps for what legitimately differs between the two sides: summation order in MatMul/Gemm/
ReduceSum/ReduceMean/Softmax (ORT's MLAS uses blocked FMA kernels, numpy pairwise sums) and
vectorized approximations of exp/tanh/sigmoid/erf in MLAS versus libm/float64 in numpy. Those
errors scale with the magnitude of the summed terms, not with the result, so an element that
cancels to ~0 can carry an absolute error proportional to the output's scale: hence the
absolute floor relative to max|ort| (at least 1e-5, for outputs in [0, 1] like Softmax).
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from qcompile.artifact.loader import load as qcompile_load
from qcompile.build import BuildOptions, build
from qcompile.frontend import from_proto
from qcompile.testing import fuzz
from qcompile.ir.interpret import run as interpret

OPSETS = {13: 7, 17: 8, 18: 10}   # opset -> the IR version exporters pair it with; 13 and 17 take
                                 # ReduceMean/ReduceMax axes as an attribute, 18 as an input
BATCH = "batch"          # the symbolic first dim of the batch variant's inputs (an ONNX dim_param)
MAX_BATCH = 4            # largest batch size fed; bounds count a `batch` dim as this
MAX_RANK = 4
MAX_OPS = 8
INT64_MAX, INT64_MIN = 2 ** 63 - 1, -2 ** 63
TAME = 30.0              # operands of products are clipped to [-TAME, TAME]

Dim = int | str
Shape = tuple[Dim, ...]
DIMS = st.integers(1, 5)

# leaf data kinds: what a fresh operand holds, and the bound on its magnitude
KIND_BOUND = {"plain": 3.0, "nonzero": 2.0, "positive": 3.0, "exponent": 2.0}


def sample(rng: np.random.Generator, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "plain":
        x = rng.uniform(-3, 3, shape)
    elif kind == "nonzero":       # denominators: |x| in [0.5, 2], either sign
        x = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.5, 2, shape)
    elif kind == "positive":      # Pow bases
        x = rng.uniform(0.5, 3, shape)
    else:                         # Pow exponents
        x = rng.uniform(-2, 2, shape)
    return np.asarray(x, np.float32)


# -- symbolic shapes --------------------------------------------------------------------------

def concrete(shape: Shape, batch: int | None) -> tuple[int, ...]:
    return tuple(batch if d == BATCH else d for d in shape)


def broadcastable(a: Shape, b: Shape) -> bool:
    """numpy rules; `batch` only meets 1 or itself, so the graph is valid at every batch size."""
    return all(x == y or x == 1 or y == 1 for x, y in zip(reversed(a), reversed(b)))


def broadcast(*shapes: Shape) -> Shape:
    rank = max(map(len, shapes))
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    return tuple(next((d for d in col if d != 1), 1) for col in zip(*padded))


def matmul_shape(a: Shape, b: Shape) -> Shape:
    if len(a) == 1 and len(b) == 1:
        return ()
    if len(a) == 1:
        return b[:-2] + b[-1:]
    if len(b) == 1:
        return a[:-1]
    return broadcast(a[:-2], b[:-2]) + (a[-2], b[-1])


def elements(shape: Shape) -> int:
    return math.prod(MAX_BATCH if d == BATCH else d for d in shape)


def prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


def onnx_slice_length(start: int, end: int, step: int, dim: int) -> int:
    """Output length of ONNX Slice on one axis (its clamping differs from Python's for step < 0)."""
    start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        return max(0, -(-(end - start) // step))
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    return max(0, -(-(start - end) // -step))


@st.composite
def broadcast_partner(draw, shape: Shape, min_rank: int = 1, max_rank: int = MAX_RANK) -> Shape:
    """A random shape that broadcasts with `shape`: equal dims, 1s, or new dims where `shape` has 1."""
    rank = draw(st.integers(min_rank, max_rank))
    out = []
    for i in range(rank):
        j = len(shape) - rank + i
        d = shape[j] if j >= 0 else 1
        out.append(draw(DIMS) if d == 1 else draw(st.sampled_from([d, 1])))
    return tuple(out)


# -- the graph builder ------------------------------------------------------------------------

@dataclass
class Val:
    name: str
    shape: Shape
    bound: float    # upper bound on |x| (a `batch` dim counted as MAX_BATCH)
    exact: bool     # bit-identical in any IEEE-754 runtime: no sums, no transcendental functions


@dataclass
class Leaf:
    """A graph input: its data is drawn at feed time, once the batch size is known."""
    name: str
    shape: Shape
    kind: str
    rows: int = 0          # kind "index": int64 indices in [-rows, rows)


@dataclass
class Case:
    model: onnx.ModelProto
    inputs: list[Leaf]
    outputs: dict[str, Shape]
    seed: int

    def feeds(self, batch: int | None = None) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, batch or 0])
        return {leaf.name: rng.integers(-leaf.rows, leaf.rows, concrete(leaf.shape, batch)).astype(np.int64)
                if leaf.kind == "index" else sample(rng, leaf.kind, concrete(leaf.shape, batch))
                for leaf in self.inputs}


class Builder:
    def __init__(self, draw, seed: int, batch: bool, opset: int = 18):
        self.draw, self.batch, self.opset = draw, batch, opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[Leaf] = []
        self.pool: list[Val] = []        # float32 values later ops may consume
        self.produced: list[Val] = []    # op results: the candidates for graph outputs
        self._ids = itertools.count()
        self._scalars: dict[float, str] = {}
        self.empty_outputs: list[Val] = []   # zero-size values that are graph outputs too

    def fresh_name(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids)}"

    def coin(self, one_in: int = 2) -> bool:
        return self.draw(st.integers(0, one_in - 1)) == 0

    def pick(self, ok=lambda v: True) -> Val | None:
        candidates = [v for v in self.pool if ok(v)]
        if not candidates:
            return None
        return self.draw(st.sampled_from(candidates[::-1]))   # newest first: shrinks toward chains

    # constants and fresh operands

    def ints(self, values) -> str:
        name = self.fresh_name("k")
        self.initializers.append(numpy_helper.from_array(np.asarray(values, np.int64).reshape(-1), name))
        return name

    def scalar(self, value: float) -> str:
        if value not in self._scalars:
            name = self.fresh_name("s")
            self.initializers.append(numpy_helper.from_array(np.array(value, np.float32), name))
            self._scalars[value] = name
        return self._scalars[value]

    def leaf(self, shape: Shape, kind: str = "plain", as_input: bool | None = None) -> Val | None:
        """A fresh operand: a graph input or an initializer, or None if neither can have this shape.

        In the batch variant every graph input is (batch, ...) and initializers are static, so a
        shape with `batch` anywhere but first cannot be made.
        """
        shape = tuple(shape)
        if BATCH in shape[1:]:
            return None
        if self.batch:
            as_input = shape[:1] == (BATCH,)
        elif as_input is None:
            as_input = self.draw(st.booleans())
        name = self.fresh_name("x" if as_input else "w")
        if as_input:
            self.inputs.append(Leaf(name, shape, kind))
        else:
            self.initializers.append(numpy_helper.from_array(sample(self.rng, kind, shape), name))
        val = Val(name, shape, KIND_BOUND[kind], exact=True)
        self.pool.append(val)
        return val

    def partner(self, shape: Shape, kind: str = "plain") -> tuple[Val, bool]:
        """A second operand that broadcasts with `shape`: an existing value or a fresh leaf."""
        if self.coin(3):
            existing = self.pick(lambda v: broadcastable(v.shape, shape))
            if existing is not None:
                return existing, False
        target = self.draw(broadcast_partner(shape))
        if BATCH in target[1:]:
            target = tuple(1 if d == BATCH else d for d in target)   # 1 broadcasts against batch too
        return self.leaf(target, kind), True

    # nodes

    def emit(self, op: str, inputs, shape: Shape, bound: float, exact: bool, pool: bool = True, **attrs) -> Val:
        names = [x.name if isinstance(x, Val) else x for x in inputs]
        out = self.fresh_name("v")
        self.nodes.append(helper.make_node(op, names, [out], name=f"{op.lower()}{len(self.nodes)}", **attrs))
        val = Val(out, tuple(shape), bound, exact)
        if pool:
            self.pool.append(val)
            self.produced.append(val)
        return val

    def clip(self, x: Val, lo: float, hi: float) -> Val:
        if -lo >= x.bound and hi >= x.bound:
            return x
        return self.emit("Clip", [x, self.scalar(lo), self.scalar(hi)], x.shape,
                         min(x.bound, max(-lo, hi)), x.exact, pool=False)

    def tame(self, x: Val) -> Val:
        return self.clip(x, -TAME, TAME)

    def away_from_zero(self, x: Val) -> Val:
        """|x| + 0.5: a denominator or Pow base of at least 0.5."""
        a = self.emit("Abs", [x], x.shape, x.bound, x.exact, pool=False)
        return self.emit("Add", [a, self.scalar(0.5)], x.shape, x.bound + 0.5, x.exact, pool=False)


# -- ops: each appends nodes and returns the result, or None when it does not fit here ----------

def op_unary(b: Builder) -> Val:
    op = b.draw(st.sampled_from(["Relu", "Neg", "Abs", "Exp", "Tanh", "Sigmoid", "Sqrt", "Erf"]))
    x = b.pick()
    if op == "Exp":
        x = b.clip(x, -3.0, 3.0)     # e^3 ~ 20: no overflow downstream
        return b.emit("Exp", [x], x.shape, math.exp(x.bound), exact=False)
    if op == "Sqrt":
        x = b.emit("Abs", [x], x.shape, x.bound, x.exact, pool=False)
        return b.emit("Sqrt", [x], x.shape, math.sqrt(x.bound), x.exact)   # sqrt is correctly rounded
    if op in ("Tanh", "Sigmoid", "Erf"):
        return b.emit(op, [x], x.shape, 1.0, exact=False)
    return b.emit(op, [x], x.shape, x.bound, x.exact)


def op_binary(b: Builder) -> Val:
    op = b.draw(st.sampled_from(["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"]))
    a = b.pick()
    if op == "Div":
        return _div(b, a)
    if op == "Pow":
        return _pow(b, a)
    other, _ = b.partner(a.shape)
    if op == "Mul":
        a, other = b.tame(a), b.tame(other)
    lhs, rhs = (a, other) if b.draw(st.booleans()) else (other, a)
    bound = {"Add": lhs.bound + rhs.bound, "Sub": lhs.bound + rhs.bound,
             "Mul": lhs.bound * rhs.bound}.get(op, max(lhs.bound, rhs.bound))
    return b.emit(op, [lhs, rhs], broadcast(lhs.shape, rhs.shape), bound, lhs.exact and rhs.exact)


def _div(b: Builder, a: Val) -> Val:
    if b.draw(st.booleans()):       # a is the numerator
        den, fresh = b.partner(a.shape, kind="nonzero")
        num = b.tame(a)
    else:                           # a is the denominator
        num, _ = b.partner(a.shape)
        num, den, fresh = b.tame(num), a, False
    if not fresh:                   # an arbitrary value: keep it >= 0.5 away from zero
        den = b.away_from_zero(b.tame(den))
    return b.emit("Div", [num, den], broadcast(num.shape, den.shape), num.bound / 0.5, num.exact and den.exact)


def _pow(b: Builder, a: Val) -> Val:
    if b.draw(st.booleans()):       # a is the base: |clip(a)| + 0.5 > 0
        base = b.away_from_zero(b.clip(a, -3.0, 3.0))
        choice = b.draw(st.sampled_from(["scalar", "fresh", "existing"]))
        if choice == "scalar":      # ORT special-cases some scalar exponents
            value = b.draw(st.sampled_from([2.0, 3.0, 0.5, -1.0, -0.5, 1.5]))
            exponent = Val(b.scalar(value), (), abs(value), True)
        else:
            exponent, fresh = b.partner(a.shape, kind="exponent")
            exponent = exponent if fresh else b.clip(exponent, -2.0, 2.0)
    else:                           # a is the exponent
        exponent = b.clip(a, -2.0, 2.0)
        base, fresh = b.partner(a.shape, kind="positive")
        base = base if fresh else b.away_from_zero(b.clip(base, -3.0, 3.0))
    e = exponent.bound
    bound = max(base.bound ** e, 0.5 ** -e)
    return b.emit("Pow", [base, exponent], broadcast(base.shape, exponent.shape), bound, exact=False)


def op_matmul(b: Builder) -> Val | None:
    x = b.tame(b.pick(lambda v: len(v.shape) >= 1))
    x_left = b.draw(st.booleans())
    k = x.shape[-1] if x_left or len(x.shape) == 1 else x.shape[-2]
    x_batch = x.shape[:-2]

    def fits(v: Val) -> bool:
        if len(v.shape) <= 1:
            return v.shape == (k,)
        return (v.shape[-2] if x_left else v.shape[-1]) == k and broadcastable(v.shape[:-2], x_batch)

    other = b.pick(fits) if b.coin(3) else None
    if other is None:
        if b.coin(4):
            shape = (k,)                                            # a 1-D operand
        else:
            batch = b.draw(broadcast_partner(x_batch, 0, MAX_RANK - 2))
            if BATCH in batch:
                batch = tuple(1 if d == BATCH else d for d in batch)
            n = b.draw(DIMS)
            shape = batch + ((k, n) if x_left else (n, k))
        other = b.leaf(shape)
        if other is None:
            return None
    other = b.tame(other)
    lhs, rhs = (x, other) if x_left else (other, x)
    k_size = MAX_BATCH if k == BATCH else k
    return b.emit("MatMul", [lhs, rhs], matmul_shape(lhs.shape, rhs.shape),
                  k_size * lhs.bound * rhs.bound, exact=False)


def op_gemm(b: Builder) -> Val | None:
    trans_a, trans_b = b.draw(st.booleans()), b.draw(st.booleans())
    a = b.pick(lambda v: len(v.shape) == 2) if b.coin(3) else None
    if a is None:
        first = BATCH if b.batch and b.coin(2) else b.draw(DIMS)
        a = b.leaf((first, b.draw(DIMS)))
    a = b.tame(a)
    m, k = reversed(a.shape) if trans_a else a.shape
    n = b.draw(DIMS)
    b_shape = (n, k) if trans_b else (k, n)
    w = b.pick(lambda v: v.shape == b_shape) if b.coin(3) else None
    w = w or b.leaf(b_shape)
    if w is None:
        return None
    w = b.tame(w)
    attrs = {}
    if trans_a or b.coin(4):
        attrs["transA"] = int(trans_a)
    if trans_b or b.coin(4):
        attrs["transB"] = int(trans_b)
    if b.coin(2):
        attrs["alpha"] = b.draw(st.sampled_from([0.5, -2.0, 1.5]))
    inputs, k_size = [a, w], MAX_BATCH if k == BATCH else k
    bound = abs(attrs.get("alpha", 1.0)) * k_size * a.bound * w.bound
    c_shape = b.draw(st.sampled_from([None, (), (n,), (1, n), (m, 1), (m, n), (1, 1)]))
    c = b.leaf(c_shape) if c_shape is not None else None    # None also where C would need `batch` inside
    if c is not None:
        c = b.tame(c)
        if b.coin(2):
            attrs["beta"] = b.draw(st.sampled_from([0.5, -1.0, 2.0]))
        inputs.append(c)
        bound += abs(attrs.get("beta", 1.0)) * c.bound
    return b.emit("Gemm", inputs, (m, n), bound, exact=False, **attrs)


def op_reshape(b: Builder) -> Val | None:
    """Target shapes use 0 (copy the input dim) and -1 (infer); `batch` moves only through those."""
    x = b.pick()
    dims, rank = x.shape, b.draw(st.integers(1, MAX_RANK))
    target: list[int | None] = [None] * rank
    out: list[Dim | None] = [None] * rank
    for i in range(min(rank, len(dims))):
        if b.coin(2 if dims[i] == BATCH else 4):
            target[i], out[i] = 0, dims[i]
    carried = [i for i, d in enumerate(dims) if d == BATCH and target[i:i + 1] != [0]]
    if len(carried) > 1:     # -1 can carry one `batch`, not batch**2
        return None
    free = [i for i in range(rank) if target[i] is None]
    copied = math.prod(d for d in out if isinstance(d, int))
    left = math.prod(d for d in dims if isinstance(d, int)) // copied
    infer = None
    if carried:                                      # -1 stands for exactly `batch`
        if not free:
            return None
        infer = b.draw(st.sampled_from(free))
        free.remove(infer)
        target[infer], out[infer] = -1, BATCH
    elif free and b.coin(3):
        infer = b.draw(st.sampled_from(free))        # -1 stands for whatever factors land there
    sizes = dict.fromkeys(free, 1)
    for p in prime_factors(left):
        if not free:
            return None
        sizes[b.draw(st.sampled_from(free))] *= p
    for i in free:
        target[i], out[i] = (-1 if i == infer else sizes[i]), sizes[i]
    return b.emit("Reshape", [x, b.ints(target)], out, x.bound, x.exact)


def op_transpose(b: Builder) -> Val:
    x = b.pick(lambda v: len(v.shape) >= 1)
    if b.coin(5):   # no perm: reverse the axes
        return b.emit("Transpose", [x], x.shape[::-1], x.bound, x.exact)
    perm = b.draw(st.permutations(range(len(x.shape))))
    return b.emit("Transpose", [x], tuple(x.shape[p] for p in perm), x.bound, x.exact, perm=list(perm))


def _maybe_negative(b: Builder, axes, rank: int) -> list[int]:
    return [a - rank if b.draw(st.booleans()) else a for a in axes]


def op_unsqueeze(b: Builder) -> Val | None:
    x = b.pick(lambda v: len(v.shape) < MAX_RANK)
    if x is None:
        return None
    rank = len(x.shape) + b.draw(st.integers(1, min(2, MAX_RANK - len(x.shape))))
    k = rank - len(x.shape)
    axes = b.draw(st.lists(st.integers(0, rank - 1), min_size=k, max_size=k, unique=True))
    out = list(x.shape)
    for a in sorted(axes):
        out.insert(a, 1)
    return b.emit("Unsqueeze", [x, b.ints(_maybe_negative(b, axes, rank))], out, x.bound, x.exact)


def op_squeeze(b: Builder) -> Val | None:
    x = b.pick(lambda v: 1 in v.shape)
    if x is None:
        return None
    ones = [i for i, d in enumerate(x.shape) if d == 1]
    if BATCH not in x.shape and b.coin(4):   # no axes: all 1s go (batch might be 1 at run time)
        return b.emit("Squeeze", [x], tuple(d for d in x.shape if d != 1), x.bound, x.exact)
    axes = b.draw(st.lists(st.sampled_from(ones), min_size=1, unique=True))
    out = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return b.emit("Squeeze", [x, b.ints(_maybe_negative(b, axes, len(x.shape)))], out, x.bound, x.exact)


def op_concat(b: Builder) -> Val | None:
    x = b.pick(lambda v: any(isinstance(d, int) for d in v.shape))
    if x is None:
        return None
    axis = b.draw(st.sampled_from([i for i, d in enumerate(x.shape) if isinstance(d, int)]))  # not batch

    def fits(v: Val) -> bool:
        return (len(v.shape) == len(x.shape) and isinstance(v.shape[axis], int)
                and all(d == e for i, (d, e) in enumerate(zip(v.shape, x.shape)) if i != axis))

    parts = [x]
    for _ in range(b.draw(st.integers(1, 2))):
        shape = x.shape[:axis] + (b.draw(DIMS),) + x.shape[axis + 1:]
        part = None if b.coin(3) else b.leaf(shape)
        parts.append(part or b.pick(fits))   # x itself always fits
    parts = b.draw(st.permutations(parts))
    out = x.shape[:axis] + (sum(p.shape[axis] for p in parts),) + x.shape[axis + 1:]
    return b.emit("Concat", parts, out, max(p.bound for p in parts), all(p.exact for p in parts),
                  axis=_maybe_negative(b, [axis], len(x.shape))[0])


@st.composite
def slice_axis(draw, dim: Dim) -> tuple[int, int, int, Dim]:
    """(start, end, step, output length) with at least one element, mixing negative and out-of-range
    indices; a `batch` axis is only sliced whole (forward or reversed)."""
    if dim == BATCH:
        return draw(st.sampled_from([(0, INT64_MAX, 1, BATCH), (-1, INT64_MIN, -1, BATCH)]))
    step = draw(st.sampled_from([1, 1, 2, 3, -1, -2]))
    if step > 0:
        start = draw(st.integers(-dim - 2, dim - 1))
        s = min(max(start + dim if start < 0 else start, 0), dim)
        e = draw(st.integers(s + 1, dim))
        end = draw(st.sampled_from([dim, dim + 3, INT64_MAX] if e == dim else [e, e - dim]))
    else:
        start = draw(st.integers(-dim - 2, dim + 2))
        s = min(max(start + dim if start < 0 else start, 0), dim - 1)
        e = draw(st.integers(-1, s - 1))
        end = draw(st.sampled_from([-dim - 1, -dim - 4, INT64_MIN] if e == -1 else [e, e - dim]))
    length = onnx_slice_length(start, end, step, dim)
    assert length >= 1, (start, end, step, dim)
    return start, end, step, length


def op_slice(b: Builder) -> Val | None:
    x = b.pick(lambda v: len(v.shape) >= 1)
    rank = len(x.shape)
    axes = b.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
    specs = [b.draw(slice_axis(x.shape[a])) for a in axes]
    out = list(x.shape)
    for a, (_, _, _, length) in zip(axes, specs):
        out[a] = length
    starts, ends, steps = ([s[i] for s in specs] for i in range(3))
    inputs = [x, b.ints(starts), b.ints(ends)]
    omit_axes = axes == list(range(len(axes))) and b.coin(2)      # default axes: 0..len-1
    omit_steps = all(s == 1 for s in steps) and b.coin(2)
    if not (omit_axes and omit_steps):
        inputs.append("" if omit_axes else b.ints(_maybe_negative(b, axes, rank)))
    if not omit_steps:
        inputs.append(b.ints(steps))
    return b.emit("Slice", inputs, out, x.bound, x.exact)


def op_softmax(b: Builder) -> Val:
    x = b.pick(lambda v: len(v.shape) >= 1)
    x = b.clip(x, -10.0, 10.0)   # softmax turns input error into relative output error: keep inputs small
    axis = b.draw(st.integers(-len(x.shape), len(x.shape) - 1))
    attrs = {} if axis == -1 and b.coin(2) else {"axis": axis}
    return b.emit("Softmax", [x], x.shape, 1.0, exact=False, **attrs)


def op_reduce(b: Builder) -> Val:
    op = b.draw(st.sampled_from(["ReduceMean", "ReduceSum", "ReduceMax"]))
    x = b.pick(lambda v: len(v.shape) >= 1)
    if op == "ReduceSum":
        x = b.tame(x)
    rank = len(x.shape)
    attrs = {}
    keepdims = b.draw(st.sampled_from([None, 0, 1]))
    if keepdims is not None:
        attrs["keepdims"] = keepdims
    style = b.draw(st.sampled_from(["axes", "axes", "axes", "none", "empty"]))
    attribute = op != "ReduceSum" and b.opset < 18     # ReduceSum's axes became an input at 13, the rest at 18
    if attribute and style == "empty":
        style = "none"
    if style == "axes":
        axes = b.draw(st.lists(st.integers(0, rank - 1), min_size=1, max_size=rank, unique=True))
        if attribute:
            inputs, attrs["axes"] = [x], _maybe_negative(b, axes, rank)
        else:
            inputs = [x, b.ints(_maybe_negative(b, axes, rank))]
    else:   # no axes input, or an empty one: both reduce everything (noop_with_empty_axes=0)
        axes = list(range(rank))
        inputs = [x] if style == "none" else [x, b.ints([])]
    keep = keepdims != 0
    out = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
    reduced = elements(tuple(x.shape[a] for a in axes))
    bound = x.bound * reduced if op == "ReduceSum" else x.bound
    return b.emit(op, inputs, out, bound, exact=x.exact and op == "ReduceMax", **attrs)


def op_where(b: Builder) -> Val:
    a = b.pick()
    other, _ = b.partner(a.shape)
    if b.draw(st.booleans()):
        a, other = other, a
    shape = broadcast(a.shape, other.shape)
    less = b.emit("Less", [a, other], shape, 1.0, True, pool=False)
    return b.emit("Where", [less, a, other], shape, max(a.bound, other.bound), a.exact and other.exact)


def op_cast(b: Builder) -> Val | None:
    x = b.pick(lambda v: v.exact)   # see the module docstring
    if x is None:
        return None
    x = b.clip(x, -60000.0, 60000.0)   # inside fp16's range
    half = b.emit("Cast", [x], x.shape, x.bound, True, pool=False, to=TensorProto.FLOAT16)
    return b.emit("Cast", [half], x.shape, x.bound, True, to=TensorProto.FLOAT)


def op_expand(b: Builder) -> Val:
    x = b.pick()
    shape = b.draw(broadcast_partner(x.shape, 0, MAX_RANK))
    shape = tuple(1 if d == BATCH else d for d in shape)     # the shape input is a constant
    return b.emit("Expand", [x, b.ints(shape)], broadcast(x.shape, shape), x.bound, x.exact)


def op_gather(b: Builder) -> Val | None:
    """Indices of any rank up to 2, negative ones included: int64 (or int32) constants, or an int64
    graph input whose values are drawn at feed time."""
    x = b.pick(lambda v: any(isinstance(d, int) and d > 0 for d in v.shape))
    if x is None:
        return None
    axis = b.draw(st.sampled_from([i for i, d in enumerate(x.shape) if isinstance(d, int) and d > 0]))
    rows = x.shape[axis]
    shape = tuple(b.draw(st.lists(st.integers(1, 3), max_size=2)))
    if len(x.shape) - 1 + len(shape) > MAX_RANK:
        shape = shape[:MAX_RANK - len(x.shape) + 1]
    if not b.batch and b.coin(3):
        name = b.fresh_name("i")
        b.inputs.append(Leaf(name, shape, "index", rows))
        index = TensorProto.INT64
    else:
        name, index = b.fresh_name("k"), b.draw(st.sampled_from([TensorProto.INT64, TensorProto.INT64,
                                                                  TensorProto.INT32]))
        values = b.rng.integers(-rows, rows, shape)
        b.initializers.append(numpy_helper.from_array(values.astype(np.int64 if index == TensorProto.INT64
                                                                    else np.int32), name))
    out = x.shape[:axis] + shape + x.shape[axis + 1:]
    return b.emit("Gather", [x, name], out, x.bound, x.exact, axis=_maybe_negative(b, [axis], len(x.shape))[0])


def op_empty(b: Builder) -> Val | None:
    """A zero-size tensor inside the graph: an empty Slice of a value, or an input with a 0 dim,
    through an elementwise op, concatenated back onto the value (which comes out unchanged); now
    and then also a graph output of its own."""
    x = b.pick(lambda v: any(isinstance(d, int) for d in v.shape))
    if x is None:
        return None
    axis = b.draw(st.sampled_from([i for i, d in enumerate(x.shape) if isinstance(d, int)]))
    shape = x.shape[:axis] + (0,) + x.shape[axis + 1:]
    empty = None
    if b.coin(2):
        empty = b.leaf(shape, as_input=True)
        if empty is not None:
            b.pool.remove(empty)
    if empty is None:
        at = b.draw(st.integers(0, x.shape[axis]))
        empty = b.emit("Slice", [x, b.ints([at]), b.ints([at]), b.ints([axis])], shape, x.bound, x.exact, pool=False)
    op = b.draw(st.sampled_from(["Relu", "Neg", "Add"]))
    inputs = [empty, b.scalar(1.0)] if op == "Add" else [empty]
    empty = b.emit(op, inputs, shape, x.bound + 1, x.exact, pool=False)
    if b.coin(4):
        b.empty_outputs.append(empty)
    parts = [x, empty] if b.coin(2) else [empty, x]
    return b.emit("Concat", parts, x.shape, x.bound, x.exact, axis=_maybe_negative(b, [axis], len(x.shape))[0])


OPS = [op_unary, op_unary, op_binary, op_binary, op_matmul, op_gemm, op_reshape, op_transpose,
       op_unsqueeze, op_squeeze, op_concat, op_slice, op_softmax, op_reduce, op_where, op_cast, op_expand,
       op_gather, op_empty]


# -- the strategy -----------------------------------------------------------------------------

def value_info(name: str, shape: Shape, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


@st.composite
def random_graphs(draw, batch: bool = False) -> Case:
    seed = draw(st.integers(0, 2 ** 32 - 1))
    opset = draw(st.sampled_from(sorted(OPSETS, reverse=True)))
    b = Builder(draw, seed, batch, opset)
    front = (BATCH,) if batch else ()
    for i in range(draw(st.integers(1, 2))):     # one or two sources; ops add more operands as they go
        dims = draw(st.lists(DIMS, min_size=1 - len(front), max_size=MAX_RANK - len(front)))
        b.leaf(front + tuple(dims), as_input=True if i == 0 else None)

    # 1..MAX_OPS ops; "go on?" draws (not a count drawn up front) let the shrinker drop ops one by one
    made = 0
    for _ in range(4 * MAX_OPS):                 # ops that do not fit here return None: draw again
        made += draw(st.sampled_from(OPS))(b) is not None
        if made == MAX_OPS or (made and b.coin(8)):
            break
    if made == 0:
        op_unary(b)

    # the last result is always an output; some intermediates too
    last = b.produced[-1]
    outputs = [v for v in b.produced[:-1] if b.coin(4)] + b.empty_outputs + [last]
    graph = helper.make_graph(
        b.nodes, "random_graph",
        inputs=[value_info(leaf.name, leaf.shape, TensorProto.INT64 if leaf.kind == "index" else TensorProto.FLOAT)
                for leaf in b.inputs],
        outputs=[value_info(v.name, v.shape) for v in outputs],
        initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=OPSETS[opset],
                              producer_name="test_random_graphs")
    return Case(model, b.inputs, {v.name: v.shape for v in outputs}, seed)


# -- running both sides -----------------------------------------------------------------------

def ort_session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def prepare(case: Case):
    """Both runtimes for one case; the ONNX checker (strict shape inference) vets the generator."""
    note(onnx.printer.to_text(case.model.graph))   # printable_graph's successor
    onnx.checker.check_model(case.model, full_check=True)
    return ort_session(case.model), from_proto(case.model)


def check_outputs(case: Case, session: ort.InferenceSession, graph, batch: int | None = None) -> None:
    feeds = case.feeds(batch)
    note(f"batch={batch} feeds={ {k: v.tolist() for k, v in feeds.items()} }")
    names = [o.name for o in session.get_outputs()]
    expected = dict(zip(names, session.run(None, feeds)))
    ours = interpret(graph, feeds)
    assert set(ours) == set(expected)
    for name, ref in expected.items():
        # generator self-checks: the symbolic shape was right and the guards kept values finite
        assert ref.shape == concrete(case.outputs[name], batch), name
        assert np.isfinite(ref).all(), name
        got = ours[name]
        assert got.shape == ref.shape, (name, got.shape, ref.shape)
        assert got.dtype == ref.dtype, (name, got.dtype, ref.dtype)
        atol = 1e-5 * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=atol, err_msg=f"output {name}")


COMMON = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=2000, **COMMON)
@given(case=random_graphs())
def test_random_graph_matches_onnxruntime(case: Case):
    session, graph = prepare(case)
    check_outputs(case, session, graph)


@settings(max_examples=1000, **COMMON)
@given(case=random_graphs(batch=True),
       sizes=st.lists(st.integers(1, MAX_BATCH), min_size=2, max_size=2, unique=True))
def test_random_graph_with_symbolic_batch(case: Case, sizes: list[int]):
    """One model, dim_param `batch` on every input, run at two batch sizes."""
    session, graph = prepare(case)
    for batch in sizes:
        check_outputs(case, session, graph, batch)


CAMPAIGN = int(os.environ.get("QCOMPILE_FUZZ_COMPILED", "0"))    # tools/fuzz.py --graphs N: N random ones
HANG_SECONDS = int(os.environ.get("QCOMPILE_FUZZ_TIMEOUT", "600"))


@settings(max_examples=CAMPAIGN or 12, **{**COMMON, "derandomize": not CAMPAIGN})
@given(case=random_graphs())
def test_random_graph_compiles_and_matches_onnxruntime(case: Case, tmp_path_factory):
    """The same graphs compiled into a native library (TVM, LLVM, the executor) at fp32."""
    session, _ = prepare(case)
    tmp = tmp_path_factory.mktemp("compiled")
    onnx.save(case.model, str(tmp / "g.onnx"))
    try:
        with fuzz.time_limit(HANG_SECONDS):
            library = qcompile_load(build(tmp / "g.onnx", BuildOptions(out_dir=tmp, target="x86_64-v3")).library)
            feeds = case.feeds(None)
            got = library(**feeds)
    except fuzz.Hang:
        pytest.fail(f"build and run still going after {HANG_SECONDS} s: a hang")
    finally:
        if CAMPAIGN:    # thousands of builds: keep the disk as it was
            shutil.rmtree(tmp, ignore_errors=True)
    expected = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    for name, ref in expected.items():
        assert got[name].shape == ref.shape and got[name].dtype == ref.dtype, name
        atol = 1e-5 * max(1.0, float(np.max(np.abs(ref), initial=0.0)))
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=atol, err_msg=f"output {name}")
