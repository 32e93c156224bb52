"""The IR: graph, values, dtypes, quant specs, verifier, text form and reference interpreter."""

from .dtypes import DType, dtype
from .graph import Graph, Node, Value
from .printer import to_text
from .quant import QuantSpec
from .verify import verify

__all__ = ["DType", "dtype", "Graph", "Node", "Value", "QuantSpec", "to_text", "verify"]
