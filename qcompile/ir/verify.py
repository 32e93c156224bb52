"""The IR verifier: structural and type invariants every pass must preserve."""

from __future__ import annotations

from ..errors import VerifyError
from .graph import Graph
from .shape_rules import SymValues, derived_types, propagate_symbolic

# Ops whose listed inputs (by position) must share one element type.
_SAME_TYPE_INPUTS = {
    **{op: None for op in ("Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Concat",
                           "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "MatMul", "And", "Or")},
    "Where": (1, 2),
    "Gemm": (0, 1),
}

def verify(g: Graph) -> None:
    """Raise VerifyError naming the first broken invariant; return None when the graph is sound."""
    produced: dict[str, str] = {}
    for v in g.constants():
        if tuple(v.const.shape) != tuple(v.shape or ()):
            raise VerifyError(f"constant '{v.name}' holds shape {list(v.const.shape)} but is typed "
                              f"{list(v.shape or ())}")
        if v.dtype.np_dtype != v.const.dtype and not (v.dtype.name == "string" and v.const.dtype.kind in "OUS"):
            raise VerifyError(f"constant '{v.name}' holds {v.const.dtype} but is typed {v.dtype}")
    for name in g.inputs:
        if name not in g.values:
            raise VerifyError(f"graph input '{name}' has no value")
        if g.values[name].is_const:
            raise VerifyError(f"graph input '{name}' is also a constant")
    for n in g.nodes:
        for out in n.outputs:
            if not out:
                continue
            if out not in g.values:
                raise VerifyError(f"output '{out}' has no value", node=n.name, op=n.op_id)
            if out in produced:
                raise VerifyError(f"value '{out}' is produced twice (also by '{produced[out]}')",
                                  node=n.name, op=n.op_id)
            if out in g.inputs or g.values[out].is_const:
                raise VerifyError(f"value '{out}' is a graph input or constant and cannot be produced",
                                  node=n.name, op=n.op_id)
            produced[out] = n.name

    cycle = g.find_cycle()
    if cycle:
        raise VerifyError("the graph has a cycle through nodes " + " -> ".join(cycle))

    available = set(g.inputs) | {v.name for v in g.constants()}
    symbolic: SymValues = {}
    for n in g.nodes:
        for name in n.inputs:
            if not name:
                continue
            if name not in g.values or (name not in available and name not in produced):
                raise VerifyError(f"input '{name}' is dangling: no graph input, constant or node produces it",
                                  node=n.name, op=n.op_id,
                                  hint="a missing initializer or a node removed without rewiring its users")
            if name not in available:
                raise VerifyError(f"input '{name}' is used before the node '{produced[name]}' that produces it",
                                  node=n.name, op=n.op_id, hint="call Graph.topo_sort()")
        available.update(o for o in n.outputs if o)
        _check_types(g, n)
        _check_output_types(g, n, symbolic)

    for name in g.outputs:
        if name not in available:
            raise VerifyError(f"graph output '{name}' is never produced")

    for v in g.values.values():
        if v.shape is not None and not all(d is None or isinstance(d, (int, str)) for d in v.shape):
            raise VerifyError(f"value '{v.name}' has a malformed shape {v.shape}")
        if v.shape is not None and any(isinstance(d, int) and d < 0 for d in v.shape):
            raise VerifyError(f"value '{v.name}' has a negative dim in {v.shape}")

def _check_types(g: Graph, n) -> None:
    if n.domain not in ("", "ai.onnx") or n.op not in _SAME_TYPE_INPUTS:
        return
    positions = _SAME_TYPE_INPUTS[n.op]
    names = [n.inputs[i] for i in positions if i < len(n.inputs)] if positions else n.inputs
    dtypes = {g.values[x].dtype.name for x in names if x}
    if len(dtypes) > 1:
        raise VerifyError(f"inputs mix element types {sorted(dtypes)}", node=n.name, op=n.op_id)


def _check_output_types(g: Graph, n, symbolic: SymValues) -> None:
    """Declared output types must agree with what the op computes from its inputs."""
    for v, want_dt, want in derived_types(g, n, symbolic):
        name = v.name
        if v.dtype is None:
            raise VerifyError(f"output '{name}' has no element type", node=n.name, op=n.op_id)
        if want_dt is not None and want_dt != v.dtype:
            raise VerifyError(f"output '{name}' is typed {v.dtype} but the op produces {want_dt}",
                              node=n.name, op=n.op_id)
        if want is None or v.shape is None:
            continue
        clash = len(want) != len(v.shape) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(want, v.shape))
        if clash:
            raise VerifyError(f"output '{name}' is declared {list(v.shape)} but the op computes {list(want)}",
                              node=n.name, op=n.op_id)
    propagate_symbolic(g, n, symbolic)


def is_valid(g: Graph) -> bool:
    try:
        verify(g)
    except VerifyError:
        return False
    return True

__all__ = ["verify", "is_valid"]
