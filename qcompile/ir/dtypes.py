"""Element types of IR values, with their numpy and ONNX counterparts.

Sub-byte types (int4, uint4, int2, uint2, ternary) are held unpacked in numpy, one element per byte;
`bits` is the storage width the packers and kernels use. Packing is a format choice made by
passes and targets, never by the IR.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np


@dataclass(frozen=True)
class DType:
    name: str
    np_dtype: np.dtype
    onnx: int | None     # TensorProto.DataType code; None for qcompile-only types
    bits: int

    @property
    def is_float(self) -> bool:
        return self.np_dtype.kind == "f" or self.name in _FLOAT_EXTRA

    @property
    def is_int(self) -> bool:
        return self.np_dtype.kind in "iu" or self.name in ("int4", "uint4", "int2", "uint2", "ternary")

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"DType({self.name})"


_FLOAT_EXTRA = {"bf16", "fp8e4m3fn", "fp8e4m3fnuz", "fp8e5m2", "fp8e5m2fnuz", "fp4e2m1", "fp8e8m0"}

_TABLE = [
    # name, numpy dtype, onnx code, storage bits
    ("fp32", np.float32, 1, 32),
    ("uint8", np.uint8, 2, 8),
    ("int8", np.int8, 3, 8),
    ("uint16", np.uint16, 4, 16),
    ("int16", np.int16, 5, 16),
    ("int32", np.int32, 6, 32),
    ("int64", np.int64, 7, 64),
    ("string", np.object_, 8, 0),
    ("bool", np.bool_, 9, 8),
    ("fp16", np.float16, 10, 16),
    ("fp64", np.float64, 11, 64),
    ("uint32", np.uint32, 12, 32),
    ("uint64", np.uint64, 13, 64),
    ("bf16", ml_dtypes.bfloat16, 16, 16),
    ("fp8e4m3fn", ml_dtypes.float8_e4m3fn, 17, 8),
    ("fp8e4m3fnuz", ml_dtypes.float8_e4m3fnuz, 18, 8),
    ("fp8e5m2", ml_dtypes.float8_e5m2, 19, 8),
    ("fp8e5m2fnuz", ml_dtypes.float8_e5m2fnuz, 20, 8),
    ("uint4", ml_dtypes.uint4, 21, 4),
    ("int4", ml_dtypes.int4, 22, 4),
    ("fp4e2m1", ml_dtypes.float4_e2m1fn, 23, 4),
    ("fp8e8m0", ml_dtypes.float8_e8m0fnu, 24, 8),
    ("uint2", ml_dtypes.uint2, 25, 2),
    ("int2", ml_dtypes.int2, 26, 2),
    # values in {-1, 0, +1}, held as int8, stored as 2-bit codes
    ("ternary", np.int8, None, 2),
]

BY_NAME: dict[str, DType] = {}
BY_ONNX: dict[int, DType] = {}
_BY_NUMPY: dict[np.dtype, DType] = {}
for _name, _np, _code, _bits in _TABLE:
    _dt = DType(_name, np.dtype(_np), _code, _bits)
    BY_NAME[_name] = _dt
    if _code is not None:
        BY_ONNX[_code] = _dt
    _BY_NUMPY.setdefault(np.dtype(_np), _dt)

FP32 = BY_NAME["fp32"]
FP16 = BY_NAME["fp16"]
BF16 = BY_NAME["bf16"]
INT8 = BY_NAME["int8"]
UINT8 = BY_NAME["uint8"]
INT32 = BY_NAME["int32"]
INT64 = BY_NAME["int64"]
BOOL = BY_NAME["bool"]
INT4 = BY_NAME["int4"]
UINT4 = BY_NAME["uint4"]
TERNARY = BY_NAME["ternary"]


def dtype(name: str) -> DType:
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown dtype '{name}'; known: {', '.join(BY_NAME)}") from None


def from_onnx(code: int) -> DType:
    try:
        return BY_ONNX[code]
    except KeyError:
        raise ValueError(f"ONNX element type {code} is not supported") from None


def from_numpy(np_dtype) -> DType:
    dt = np.dtype(np_dtype)
    if dt.kind in "US":
        return BY_NAME["string"]
    try:
        return _BY_NUMPY[dt]
    except KeyError:
        raise ValueError(f"numpy dtype {dt} has no IR counterpart") from None
