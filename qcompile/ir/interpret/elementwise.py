"""Elementwise ops: unary math, broadcasting binary ops, comparisons, Where, Cast."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np

from ...errors import InterpretError
from ..dtypes import from_onnx
from .registry import kernel

_LOW_FLOATS = {np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)}


def _float_unary(fn):
    """Compute in fp32 at least (fp16/bf16 upcast), return the input dtype."""
    def run(node, x):
        work = x.astype(np.float32) if x.dtype in _LOW_FLOATS else x
        return np.asarray(fn(node, work)).astype(x.dtype, copy=False)
    return run


_erf = np.vectorize(math.erf, otypes=[np.float64])

_UNARY = {
    "Exp": lambda n, x: np.exp(x),
    "Log": lambda n, x: np.log(x),
    "Sqrt": lambda n, x: np.sqrt(x),
    "Reciprocal": lambda n, x: np.reciprocal(x),
    "Tanh": lambda n, x: np.tanh(x),
    "Sigmoid": lambda n, x: _sigmoid(x),
    "Erf": lambda n, x: _erf(x),
    "Sin": lambda n, x: np.sin(x), "Cos": lambda n, x: np.cos(x), "Tan": lambda n, x: np.tan(x),
    "Asin": lambda n, x: np.arcsin(x), "Acos": lambda n, x: np.arccos(x), "Atan": lambda n, x: np.arctan(x),
    "Sinh": lambda n, x: np.sinh(x), "Cosh": lambda n, x: np.cosh(x),
    "Asinh": lambda n, x: np.arcsinh(x), "Acosh": lambda n, x: np.arccosh(x), "Atanh": lambda n, x: np.arctanh(x),
    "Floor": lambda n, x: np.floor(x), "Ceil": lambda n, x: np.ceil(x), "Round": lambda n, x: np.round(x),
    "Softplus": lambda n, x: np.logaddexp(0, x),
    "Softsign": lambda n, x: x / (1 + np.abs(x)),
    "Gelu": lambda n, x: _gelu(x, n.attrs.get("approximate", "none")),
    "Elu": lambda n, x: np.where(x > 0, x, n.attrs.get("alpha", 1.0) * np.expm1(x)),
    "Celu": lambda n, x: _celu(x, n.attrs.get("alpha", 1.0)),
    "Selu": lambda n, x: n.attrs.get("gamma", 1.05070102214813232421875) * np.where(
        x > 0, x, n.attrs.get("alpha", 1.67326319217681884765625) * np.expm1(x)),
    "LeakyRelu": lambda n, x: np.where(x >= 0, x, x * n.attrs.get("alpha", 0.01)),
    "ThresholdedRelu": lambda n, x: np.where(x > n.attrs.get("alpha", 1.0), x, 0),
    "HardSigmoid": lambda n, x: np.clip(n.attrs.get("alpha", 0.2) * x + n.attrs.get("beta", 0.5), 0, 1),
    "HardSwish": lambda n, x: x * np.clip(x / 6 + 0.5, 0, 1),
    "Mish": lambda n, x: x * np.tanh(np.logaddexp(0, x)),
}
for _op, _fn in _UNARY.items():
    kernel(_op)(_float_unary(_fn))


def _sigmoid(x):
    # split by sign so exp never overflows
    pos = 1 / (1 + np.exp(-np.abs(x)))
    return np.where(x >= 0, pos, 1 - pos)


def _gelu(x, approximate: str):
    if approximate == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)).astype(x.dtype))


def _celu(x, alpha):
    return np.maximum(0, x) + np.minimum(0, alpha * np.expm1(x / alpha))


_EXACT_UNARY = {"Abs": np.abs, "Neg": np.negative, "IsNaN": np.isnan, "Not": np.logical_not,
                "BitwiseNot": np.invert}
for _op, _fn in _EXACT_UNARY.items():
    kernel(_op)(lambda node, x, _fn=_fn: _fn(x))


@kernel("Sign")
def _sign(node, x):
    return np.sign(x).astype(x.dtype)


@kernel("Relu")
def _relu(node, x):
    return np.maximum(x, np.zeros((), x.dtype))


@kernel("IsInf")
def _isinf(node, x):
    pos = node.attrs.get("detect_positive", 1) and (x == np.inf)
    neg = node.attrs.get("detect_negative", 1) and (x == -np.inf)
    return np.logical_or(pos, neg)


@kernel("Clip")
def _clip(node, x, lo=None, hi=None):
    if lo is not None:
        x = np.maximum(x, lo)
    if hi is not None:
        x = np.minimum(x, hi)
    return x


# -- binary, with numpy (= ONNX multidirectional) broadcasting ---------------------------------

def _same_type(fn):
    def run(node, a, b):
        return np.asarray(fn(a, b)).astype(a.dtype, copy=False)
    return run


def _div(a, b):
    if a.dtype.kind in "iu":
        q = np.trunc(a.astype(np.float64) / b)   # C semantics: truncate toward zero
        return q
    return a / b


def _pow(a, b):
    if a.dtype.kind in "iu":
        return np.power(a.astype(np.float64), b.astype(np.float64))
    return np.power(a, b.astype(a.dtype) if b.dtype.kind in "iu" else b)


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div, "Pow": _pow,
    "BitwiseAnd": np.bitwise_and, "BitwiseOr": np.bitwise_or, "BitwiseXor": np.bitwise_xor,
}
for _op, _fn in _BINARY.items():
    kernel(_op)(_same_type(_fn))

_COMPARE = {
    "Equal": np.equal, "Less": np.less, "LessOrEqual": np.less_equal, "Greater": np.greater,
    "GreaterOrEqual": np.greater_equal, "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
}
for _op, _fn in _COMPARE.items():
    kernel(_op)(lambda node, a, b, _fn=_fn: _fn(a, b))


@kernel("Mod")
def _mod(node, a, b):
    if node.attrs.get("fmod", 0):
        return np.fmod(a, b)
    return np.mod(a, b).astype(a.dtype)


@kernel("BitShift")
def _bitshift(node, a, b):
    direction = node.attrs.get("direction", "LEFT")
    return (np.left_shift(a, b) if direction == "LEFT" else np.right_shift(a, b)).astype(a.dtype)


@kernel("PRelu")
def _prelu(node, x, slope):
    return np.where(x < 0, x * slope, x).astype(x.dtype)


def _variadic(fn):
    def run(node, *xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return np.asarray(out).astype(xs[0].dtype, copy=False)
    return run


kernel("Max")(_variadic(np.maximum))
kernel("Min")(_variadic(np.minimum))
kernel("Sum")(_variadic(np.add))


@kernel("Mean")
def _mean(node, *xs):
    return (_variadic(np.add)(node, *xs) / len(xs)).astype(xs[0].dtype)


@kernel("Where")
def _where(node, cond, x, y):
    return np.where(cond, x, y)


# -- Cast -----------------------------------------------------------------------------------

_FP8_NO_INF = {"fp8e4m3fn", "fp8e4m3fnuz", "fp8e5m2fnuz"}


def cast(x: np.ndarray, to, saturate: bool = True) -> np.ndarray:
    """ONNX Cast semantics, including fp8 saturation and string round-trips."""
    target = to.np_dtype
    if to.name == "string":
        return _to_string(x)
    if x.dtype.kind in "OUS":
        return np.array([float(s) for s in x.reshape(-1)], np.float64).reshape(x.shape).astype(target)
    if to.name.startswith("fp8") or to.name == "fp4e2m1":
        src = x.astype(np.float32)
        limit = float(ml_dtypes.finfo(target).max)
        if saturate:
            src = np.clip(src, -limit, limit)
        elif to.name in _FP8_NO_INF:
            src = np.where(np.abs(src) > limit, np.nan, src)
        return src.astype(target)
    if to.name in ("int4", "uint4", "int2", "uint2"):
        info = ml_dtypes.iinfo(target)
        if x.dtype.kind == "f" or x.dtype in _LOW_FLOATS:
            x = np.round(x.astype(np.float32))
        wrapped = (x.astype(np.int64) - info.min) % (info.max - info.min + 1) + info.min
        return wrapped.astype(target)
    if x.dtype in _LOW_FLOATS or x.dtype.name.startswith(("float8", "float4", "int2", "uint2", "int4", "uint4")):
        x = x.astype(np.float32)
    return x.astype(target)


def _to_string(x: np.ndarray) -> np.ndarray:
    flat = [_scalar_text(v) for v in x.reshape(-1).tolist()]
    return np.array(flat, dtype=object).reshape(x.shape)


def _scalar_text(v) -> str:
    if isinstance(v, float):
        text = repr(float(np.float32(v)))
        return {"nan": "NaN", "inf": "INF", "-inf": "-INF"}.get(text, text)
    return str(v)


@kernel("Cast")
def _cast(node, x):
    to = node.attrs.get("to")
    if to is None:
        raise InterpretError("Cast needs a 'to' attribute", node=node.name, op="Cast")
    return cast(x, from_onnx(to), bool(node.attrs.get("saturate", 1)))


@kernel("CastLike")
def _cast_like(node, x, like):
    from ..dtypes import from_numpy
    return cast(x, from_numpy(like.dtype), bool(node.attrs.get("saturate", 1)))


@kernel("qcompile.Rotary")
def _rotary(node, x, cos, sin):
    """x * cos + rotate_half(x) * sin, rotate_half([a, b]) = [-b, a] on the last axis."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos + rotated * sin).astype(x.dtype)
