"""fold_constants: evaluate nodes whose inputs are all known, with the reference interpreter.

Shape(x) of a statically shaped x is known too. Folding never inflates the model: a node whose
output is much larger than its inputs (a broadcast, ConstantOfShape of a big shape) stays.
"""

from __future__ import annotations

import numpy as np

from ..ir.dtypes import from_numpy
from ..ir.graph import Graph, Node
from ..ir.interpret import run_node
from .registry import register_pass

MAX_GROWTH_ELEMS = 1 << 16   # fold freely below this; above, only if not bigger than the inputs


def _known(g: Graph, name: str) -> np.ndarray | None:
    return g.values[name].const if name else None


def _try_shape(g: Graph, n: Node) -> list[np.ndarray] | None:
    if n.op != "Shape" or n.domain:
        return None
    v = g.values[n.inputs[0]]
    if not v.is_static:
        return None
    return run_node(n, [np.empty(v.shape, dtype=np.uint8)])


@register_pass("fold_constants")
def fold_constants(g: Graph) -> Graph:
    """Replace nodes computable at compile time by constants."""
    folded: list[Node] = []
    for n in g.nodes:
        results = _try_shape(g, n)
        if results is None:
            if not n.inputs and n.op != "Constant" or n.domain:
                continue
            args = [_known(g, name) for name in n.inputs]
            if any(a is None and name for a, name in zip(args, n.inputs)):
                continue
            results = run_node(n, args)
            biggest_in = max((a.size for a in args if a is not None), default=0)
            if any(r.size > max(MAX_GROWTH_ELEMS, biggest_in) for r in results):
                continue
        for name, arr in zip(n.outputs, results):
            if not name:
                continue
            v = g.values[name]
            v.const = arr
            v.dtype = from_numpy(arr.dtype) if v.dtype is None or v.dtype.np_dtype != arr.dtype else v.dtype
            v.shape = tuple(int(d) for d in arr.shape)
        folded.append(n)
    g.remove_nodes(folded)
    g.prune_values()
    return g
