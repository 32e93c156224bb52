"""QuantSpec: how a value's numbers map to real numbers.

A spec is attached to a Value by the passes that quantize it; later stages read it and never
guess. `real = (q - zero_point) * scale`, with the scale broadcast by granularity:
per_tensor (one scale), per_channel (one per index of `axis`), per_group (one per `group_size`
consecutive elements along `axis`, for each other index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FORMATS = ("int8", "uint8", "int4", "uint4", "ternary", "bf16", "fp16", "fp8")
GRANULARITIES = ("per_tensor", "per_channel", "per_group")


@dataclass
class QuantSpec:
    format: str
    bits: int
    granularity: str = "per_tensor"
    axis: int | None = None
    group_size: int | None = None
    scales: np.ndarray | None = None
    zero_points: np.ndarray | None = None

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"unknown quant format '{self.format}'; known: {', '.join(FORMATS)}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity '{self.granularity}'")
        if self.granularity == "per_group" and not self.group_size:
            raise ValueError("per_group quantization needs a group_size")
        if self.granularity != "per_tensor" and self.axis is None:
            raise ValueError(f"{self.granularity} quantization needs an axis")

    @classmethod
    def of_qlinear(cls, attrs: dict, scales, zero_points=None) -> "QuantSpec":
        """The weight spec a qcompile.QLinear node's attributes describe, with its scales and zero points."""
        return cls(attrs.get("family", "int8"), int(attrs.get("bits", 8)), attrs["granularity"], attrs.get("axis"),
                   attrs.get("group_size") or None, scales=scales, zero_points=zero_points)

    @property
    def symmetric(self) -> bool:
        return self.zero_points is None or not np.any(self.zero_points)

    def expand(self, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Broadcast a scale or zero-point array to the full value shape."""
        arr = np.asarray(arr)
        if self.granularity == "per_tensor":
            return np.broadcast_to(arr.reshape(()), shape)
        axis = self.axis % len(shape)
        if self.granularity == "per_channel":
            view = [1] * len(shape)
            view[axis] = shape[axis]
            return np.broadcast_to(arr.reshape(view), shape)
        return np.repeat(arr, self.group_size, axis=axis).take(range(shape[axis]), axis=axis)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        q = q.astype(np.float32)
        if self.zero_points is not None:
            q = q - self.expand(self.zero_points, q.shape).astype(np.float32)
        if self.scales is None:
            return q
        return q * self.expand(self.scales, q.shape).astype(np.float32)

    def describe(self) -> str:
        parts = [f"{self.format}", f"{self.bits}b", self.granularity]
        if self.axis is not None:
            parts.append(f"axis={self.axis}")
        if self.group_size:
            parts.append(f"g={self.group_size}")
        parts.append("sym" if self.symmetric else "asym")
        return " ".join(parts)
