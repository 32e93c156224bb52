"""Tables indexed past their end: a Gather whose indices are computed in the graph from the dims
(a learned position table read at Range(0, seq)) is only right while the indices stay inside the
table, and its kernel clamps what does not. The graph says how large an index can get, as a
linear expression of the dims; the executor refuses a call whose dims would take it past the
table, as onnxruntime refuses the index. (Indices that are graph inputs are checked value by value
in the executor instead: index_inputs.)

No TVM here: this reads the plan's graph and its symbolic values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..ir import dims
from .plan import VIEW_OPS

_PASS_THROUGH = {"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity", "Expand", "Cast"}


@dataclass
class IndexedTable:
    table: str
    node: str          # the Gather
    rows: int

    def describe(self) -> str:
        return f"'{self.table}' (node {self.node})"


def index_inputs(g) -> dict[str, IndexedTable]:
    """Integer graph inputs used (directly or through reshapes) as Gather indices -> the table
    they index (the one with the fewest rows along the gathered axis, where several). The executor
    refuses an index outside [-rows, rows), as onnxruntime does (a kernel would clamp it); the
    self-test draws such inputs inside it."""
    producers = g.producers()
    out: dict[str, IndexedTable] = {}
    for n in g.nodes:
        if n.op != "Gather" or n.domain or len(n.inputs) < 2:
            continue
        source = n.inputs[1]
        while source in producers and producers[source].op in VIEW_OPS:
            source = producers[source].inputs[0]
        table = g.values[n.inputs[0]]
        axis = n.attrs.get("axis", 0)
        if source not in g.inputs or not table.shape or not isinstance(table.shape[axis], int):
            continue
        if source not in out or table.shape[axis] < out[source].rows:
            out[source] = IndexedTable(n.inputs[0], n.name, table.shape[axis])
    return out


@dataclass
class TableLimit:
    node: str          # the Gather
    table: str
    rows: int
    limit: str         # a dim expression that must stay at most `most`
    most: int

    def describe(self) -> str:
        return (f"it indexes '{self.table}' (node {self.node}), which has {self.rows} rows, so {self.limit} may be "
                f"at most {self.most}")


def table_limits(g, symbolic: dict) -> tuple[list[TableLimit], list[str]]:
    """(limits the executor checks, Gather nodes whose computed indices it cannot bound: named in
    the build log, since their kernels clamp an index past the table)."""
    producers = g.producers()
    limits, unbounded = [], []
    for n in g.nodes:
        if n.op != "Gather" or n.domain or len(n.inputs) < 2:
            continue
        table, index = g.values[n.inputs[0]], g.values[n.inputs[1]]
        axis = n.attrs.get("axis", 0)
        if (table.const is None or index.const is not None or n.inputs[1] in g.inputs or n.inputs[1] in symbolic
                or not isinstance(table.shape[axis], int)):
            continue      # a data table, constant or build-time indices, or an input the executor checks
        rows = table.shape[axis]
        bound = _largest_index(n.inputs[1], g, producers, symbolic)
        if bound is None:
            if not _reaches_input(n.inputs[1], g, producers):
                unbounded.append(n.name)
            continue
        limit, offset = bound     # the largest index is limit + offset
        lin = dims.parse(limit)
        if not lin.terms:
            continue              # a constant: the graph itself is wrong or fine, at any input
        limits.append(TableLimit(n.name, n.inputs[0], rows, limit, rows - 1 - offset))
    return limits, unbounded


def _largest_index(name, g, producers, symbolic) -> tuple[str, int] | None:
    """(dim expression, offset) whose sum bounds every value of integer tensor `name` from above."""
    offset = 0
    while name in producers:
        n = producers[name]
        if n.op in _PASS_THROUGH:
            name = n.inputs[0]
        elif n.op == "Add" and _scalar(g, n.inputs[1]) is not None:
            offset += _scalar(g, n.inputs[1])
            name = n.inputs[0]
        elif n.op == "Range":
            step = _scalar(g, n.inputs[2])
            limit = symbolic.get(n.inputs[1], (_scalar(g, n.inputs[1]),))
            if step is None or step <= 0 or len(limit) != 1 or limit[0] is None:
                return None
            return str(limit[0]), offset - 1          # every value < limit
        else:
            return None
    return None


def _reaches_input(name, g, producers) -> bool:
    while name in producers and producers[name].op in _PASS_THROUGH:
        name = producers[name].inputs[0]
    return name in g.inputs


def _scalar(g, name) -> int | None:
    v = g.values.get(name)
    if v is None or v.const is None or np.asarray(v.const).size != 1:
        return None
    value = np.asarray(v.const).reshape(-1)[0]
    return int(value) if np.issubdtype(np.asarray(v.const).dtype, np.integer) else None
