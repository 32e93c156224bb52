"""Shared onnx.helper plumbing for the zoo generators.

The generators write graphs the way an exporter would (explicit Shape/Range
arithmetic, Constant nodes, named initializers) so that frontend and passes are
exercised on realistic patterns, while staying small and fully deterministic.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 18
IR_VERSION = 10
FLOAT_MIN = float(np.finfo(np.float32).min)
"""Additive mask value: finite (unlike -inf) so fully masked rows never turn
into NaN, and what HF uses (`torch.finfo(dtype).min`)."""

Dim = int | str
"""A static size, or a `dim_param` name for a symbolic one."""


class GraphBuilder:
    """Accumulates nodes, initializers and graph I/O with collision-free names.

    Value and node names are prefixed with the current scope (e.g.
    `layers.0/attn/MatMul_3`) so compiler diagnostics point at the source layer.
    """

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._used: set[str] = set()
        self._scope: list[str] = []
        self._consts: dict[tuple[str, tuple[int, ...], bytes], str] = {}

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        self._scope.append(name)
        try:
            yield
        finally:
            self._scope.pop()

    def fresh(self, hint: str) -> str:
        base = "/".join([*self._scope, hint])
        name, n = base, 0
        while name in self._used:
            n += 1
            name = f"{base}_{n}"
        self._used.add(name)
        return name

    def input(self, name: str, elem_type: int, shape: Sequence[Dim]) -> str:
        self._used.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, shape))
        return name

    def output(self, value: str, name: str, elem_type: int, shape: Sequence[Dim]) -> None:
        """Expose `value` as graph output `name` (through Identity, as exporters do)."""
        self._used.add(name)
        self.nodes.append(helper.make_node("Identity", [value], [name], name=self.fresh("Identity")))
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, shape))

    def op(self, op_type: str, *inputs: str, **attrs: object) -> str:
        """Append a single-output node and return its output name."""
        out = self.fresh(op_type)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def const(self, value: object, dtype: type = np.int64) -> str:
        """A Constant node, shared between identical values to keep graphs small."""
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            out = self.fresh("Constant")
            tensor = numpy_helper.from_array(array, name=out)
            self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=tensor))
            self._consts[key] = out
        return self._consts[key]

    def fconst(self, value: object) -> str:
        return self.const(value, np.float32)

    def param(self, name: str, array: np.ndarray) -> str:
        """Register an initializer under an exact (unscoped) name tests can look up."""
        if name in self._used:
            raise ValueError(f"duplicate initializer name {name!r}")
        self._used.add(name)
        self.initializers.append(numpy_helper.from_array(array, name=name))
        return name

    def normal(self, name: str, shape: Sequence[int], std: float, mean: float = 0.0) -> str:
        array = (mean + std * self.rng.standard_normal(tuple(shape))).astype(np.float32)
        return self.param(name, array)

    def linear_weight(self, name: str, fan_in: int, fan_out: int) -> str:
        """[in, out] weight with std 1/sqrt(fan_in).

        HF's fixed 0.02 would make these tiny models near-linear with uniform
        attention and ~0 logits; fan-in scaling keeps every activation O(1) so
        numeric comparisons actually test something.
        """
        return self.normal(name, (fan_in, fan_out), fan_in**-0.5)

    def norm_gamma(self, name: str, size: int) -> str:
        """Gammas around 1 (not exactly 1) so a dropped or misplaced scale is caught."""
        return self.normal(name, (size,), 0.1, mean=1.0)

    def build(self, name: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, self.inputs, self.outputs, self.initializers)
        return helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="qcompile.zoo",
        )

    # Idioms shared by several models.

    def shape_dim(self, value: str, axis: int) -> str:
        """Scalar int64 size of `value` along `axis`, computed at run time."""
        return self.op("Gather", self.op("Shape", value), self.const(axis), axis=0)

    def unsqueeze(self, value: str, axes: Sequence[int]) -> str:
        return self.op("Unsqueeze", value, self.const(list(axes)))

    def reshape(self, value: str, shape: str | Sequence[int]) -> str:
        return self.op("Reshape", value, shape if isinstance(shape, str) else self.const(list(shape)))

    def transpose(self, value: str, perm: Sequence[int]) -> str:
        return self.op("Transpose", value, perm=list(perm))


def count_params(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def op_histogram(model: onnx.ModelProto) -> dict[str, int]:
    hist: dict[str, int] = {}
    for node in model.graph.node:
        hist[node.op_type] = hist.get(node.op_type, 0) + 1
    return dict(sorted(hist.items()))
