"""Frontends: model files in, IR out."""

from .onnx import load, from_proto

__all__ = ["load", "from_proto"]
