"""Small multilayer perceptron: the simplest model that still has both dense idioms."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import TensorProto

from .common import GraphBuilder


def make_mlp(
    in_features: int = 64,
    hidden: Sequence[int] = (128, 128),
    out_features: int = 10,
    seed: int = 0,
) -> onnx.ModelProto:
    """x["batch", in] -> y["batch", out].

    Hidden layers are Gemm(transB=1)+Relu (torch Linear as exported by the
    TorchScript exporter, weight `layers.i.weight` stored [out, in]); the final
    layer is MatMul+Add (weight stored [in, out]) as the dynamo exporter emits,
    so a frontend must handle both.
    """
    gb = GraphBuilder(seed)
    h = gb.input("x", TensorProto.FLOAT, ["batch", in_features])
    width = in_features
    for i, out in enumerate(hidden):
        with gb.scope(f"layers.{i}"):
            w = gb.normal(f"layers.{i}.weight", (out, width), width**-0.5)
            b = gb.normal(f"layers.{i}.bias", (out,), 0.1)
            h = gb.op("Relu", gb.op("Gemm", h, w, b, transB=1))
        width = out
    i = len(hidden)
    with gb.scope(f"layers.{i}"):
        w = gb.linear_weight(f"layers.{i}.weight", width, out_features)
        b = gb.normal(f"layers.{i}.bias", (out_features,), 0.1)
        y = gb.op("Add", gb.op("MatMul", h, w), b)
    gb.output(y, "y", TensorProto.FLOAT, ["batch", out_features])
    return gb.build("mlp")
