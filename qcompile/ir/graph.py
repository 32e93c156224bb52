"""The IR: a Graph of Nodes that read and write named Values.

Nodes refer to values by name, which keeps rewrites simple and the text form diffable. A value
is produced by at most one node, or is a graph input, or is a constant (holds a numpy array).
Op semantics are those of the ONNX op of the same name at the newest opset (the frontend
upgrades older forms), plus qcompile's own ops in the "qcompile" domain.

Shapes are tuples of dims; a dim is an int, a symbolic name or expression (str, e.g. "seq",
"past+seq"), or None when unknown. A shape of None means the rank is unknown. Upper bounds of
symbolic names live in `Graph.dim_bounds`.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx
import numpy as np

from .dtypes import DType, from_numpy
from .quant import QuantSpec

Dim = int | str | None
Shape = tuple[Dim, ...] | None


@dataclass
class Value:
    name: str
    dtype: DType
    shape: Shape = None
    const: np.ndarray | None = None
    quant: QuantSpec | None = None

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    @property
    def nbytes(self) -> int:
        if self.const is not None:
            return int(self.const.size * self.dtype.bits // 8)
        return 0


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""

    @property
    def op_id(self) -> str:
        """Op type qualified by domain, as the registries key it ('Add', 'com.microsoft.MatMulNBits')."""
        return self.op if self.domain in ("", "ai.onnx") else f"{self.domain}.{self.op}"

    def input(self, i: int) -> str | None:
        """Name of input i, or None when it is absent (past the end or left empty)."""
        return self.inputs[i] if i < len(self.inputs) and self.inputs[i] else None


class Graph:
    def __init__(self, name: str = "graph", opsets: dict[str, int] | None = None):
        self.name = name
        self.opsets: dict[str, int] = dict(opsets or {"": 18})
        self.values: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.dim_bounds: dict[str, int] = {}
        self.metadata: dict[str, str] = {}
        self._counter = itertools.count()

    # -- construction -------------------------------------------------------------------------
    def unique_name(self, hint: str) -> str:
        taken = self.values.keys() | {n.name for n in self.nodes}
        if hint not in taken:
            return hint
        while True:
            name = f"{hint}_{next(self._counter)}"
            if name not in taken:
                return name

    def add_value(self, name: str, dtype: DType, shape: Shape = None, const: np.ndarray | None = None,
                  quant: QuantSpec | None = None) -> Value:
        if name in self.values:
            raise ValueError(f"value '{name}' already exists")
        if shape is not None:
            shape = tuple(shape)
        value = Value(name, dtype, shape, const, quant)
        self.values[name] = value
        return value

    def add_const(self, hint: str, array: np.ndarray, dtype: DType | None = None) -> Value:
        array = np.asarray(array)
        return self.add_value(self.unique_name(hint), dtype or from_numpy(array.dtype),
                              tuple(int(d) for d in array.shape), const=array)

    def add_input(self, name: str, dtype: DType, shape: Shape) -> Value:
        value = self.add_value(name, dtype, shape)
        self.inputs.append(name)
        return value

    def add_node(self, op: str, inputs: Iterable[str], outputs: Iterable[str], attrs: dict | None = None,
                 name: str | None = None, domain: str = "") -> Node:
        node = Node(self.unique_name(name or op), op, list(inputs), list(outputs), dict(attrs or {}), domain)
        self.nodes.append(node)
        return node

    # -- queries ------------------------------------------------------------------------------
    def producers(self) -> dict[str, Node]:
        return {out: n for n in self.nodes for out in n.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for name in n.inputs:
                if name:
                    users.setdefault(name, []).append(n)
        return users

    def constants(self) -> list[Value]:
        return [v for v in self.values.values() if v.is_const]

    def param_count(self) -> int:
        return sum(int(v.const.size) for v in self.constants())

    def param_bytes(self) -> int:
        return sum(v.nbytes for v in self.constants())

    def op_histogram(self) -> dict[str, int]:
        hist: dict[str, int] = {}
        for n in self.nodes:
            hist[n.op_id] = hist.get(n.op_id, 0) + 1
        return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))

    def to_networkx(self) -> nx.MultiDiGraph:
        """Node-level dataflow graph: one vertex per node name, one edge per value read."""
        g = nx.MultiDiGraph()
        producer = self.producers()
        for n in self.nodes:
            g.add_node(n.name, node=n)
        for n in self.nodes:
            for name in n.inputs:
                if name and name in producer:
                    g.add_edge(producer[name].name, n.name, value=name)
        return g

    def topo_sort(self) -> None:
        """Reorder nodes topologically, keeping the current order among independent nodes."""
        g = self.to_networkx()
        position = {n.name: i for i, n in enumerate(self.nodes)}
        order = nx.lexicographical_topological_sort(g, key=position.__getitem__)
        by_name = {n.name: n for n in self.nodes}
        self.nodes = [by_name[name] for name in order]

    def find_cycle(self) -> list[str] | None:
        try:
            return [u for u, _v, *_ in nx.find_cycle(self.to_networkx())]
        except nx.NetworkXNoCycle:
            return None

    # -- edits --------------------------------------------------------------------------------
    def remove_nodes(self, doomed: Iterable[Node]) -> None:
        ids = {id(n) for n in doomed}
        self.nodes = [n for n in self.nodes if id(n) not in ids]

    def replace_uses(self, old: str, new: str) -> None:
        for n in self.nodes:
            n.inputs = [new if name == old else name for name in n.inputs]
        self.outputs = [new if name == old else name for name in self.outputs]

    def prune_values(self) -> None:
        """Drop values nothing refers to (left over after rewrites)."""
        used = set(self.inputs) | set(self.outputs)
        for n in self.nodes:
            used.update(x for x in n.inputs if x)
            used.update(x for x in n.outputs if x)
        self.values = {k: v for k, v in self.values.items() if k in used}

    def copy(self) -> "Graph":
        """Structure is copied; constant arrays are shared (passes replace, never mutate, them)."""
        other = Graph(self.name, self.opsets)
        other.values = {k: copy.copy(v) for k, v in self.values.items()}
        other.nodes = [Node(n.name, n.op, list(n.inputs), list(n.outputs), dict(n.attrs), n.domain)
                       for n in self.nodes]
        other.inputs = list(self.inputs)
        other.outputs = list(self.outputs)
        other.dim_bounds = dict(self.dim_bounds)
        other.metadata = dict(self.metadata)
        return other

    def __str__(self) -> str:
        from .printer import to_text
        return to_text(self)

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.nodes)} nodes, {len(self.values)} values>"
