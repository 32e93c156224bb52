"""Opset range and the upgrades that bring older ONNX op forms to the newest semantics.

The IR speaks one dialect: each op as the newest ONNX opset defines it. Older models differ
mostly in attributes that later became inputs; `upgrade_node` moves them, so converters and
the interpreter handle one form only.
"""

from __future__ import annotations

import onnx.defs

MIN_OPSET = 1
MAX_OPSET = onnx.defs.onnx_opset_version()

# op -> (attribute, input position, opset where it became an input, numpy dtype name)
ATTR_TO_INPUT = {
    "Reshape": [("shape", 1, 5, "int64")],
    "Squeeze": [("axes", 1, 13, "int64")],
    "Unsqueeze": [("axes", 1, 13, "int64")],
    "Split": [("split", 1, 13, "int64")],
    "ReduceSum": [("axes", 1, 13, "int64")],
    **{op: [("axes", 1, 18, "int64")] for op in (
        "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},
    "Slice": [("starts", 1, 10, "int64"), ("ends", 2, 10, "int64"), ("axes", 3, 10, "int64")],
    "Pad": [("pads", 1, 11, "int64"), ("value", 2, 11, "float32")],
    "Clip": [("min", 1, 11, "float32"), ("max", 2, 11, "float32")],
}

# ops whose axis semantics before opset 13 flatten the input to 2-D around `axis`
COERCE_2D_BEFORE_13 = {"Softmax", "LogSoftmax", "Hardmax"}

# before opset 7, binary ops broadcast only when asked, along an `axis`: not the numpy rule
LEGACY_BROADCAST_BEFORE_7 = {"Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Xor", "Equal", "Less", "Greater"}
