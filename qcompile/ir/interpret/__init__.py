"""The numpy reference interpreter: executes any IR graph; the oracle for passes and kernels."""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from ...errors import InterpretError
from ..graph import Graph, Node
from . import conv, elementwise, nn, quant, reduce, tensor  # noqa: F401  (fill the registry)
from .registry import KERNELS, kernel

__all__ = ["run", "run_node", "supported_ops", "KERNELS", "kernel"]


def supported_ops() -> set[str]:
    return set(KERNELS)


def run_node(node: Node, inputs: list[np.ndarray | None]) -> list[np.ndarray]:
    fn = KERNELS.get(node.op_id)
    if fn is None:
        raise InterpretError("the reference interpreter has no implementation", node=node.name, op=node.op_id)
    try:
        with np.errstate(all="ignore"):
            result = fn(node, *inputs)
    except InterpretError:
        raise
    except Exception as exc:  # a numpy error inside an op: name the node
        shapes = ", ".join("_" if x is None else f"{x.dtype}{list(x.shape)}" for x in inputs)
        raise InterpretError(f"{type(exc).__name__}: {exc} (inputs: {shapes})",
                             node=node.name, op=node.op_id) from exc
    outs = list(result) if isinstance(result, (tuple, list)) else [result]
    return [np.asarray(o) for o in outs]


def bind_inputs(g: Graph, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Check feeds against the graph inputs (dtype, rank, static dims, consistent symbols)."""
    missing = [name for name in g.inputs if name not in feeds]
    if missing:
        raise InterpretError(f"missing inputs: {', '.join(missing)}")
    extra = sorted(set(feeds) - set(g.inputs))
    if extra:
        raise InterpretError(f"unknown inputs: {', '.join(extra)}; the graph takes {', '.join(g.inputs)}")
    env: dict[str, np.ndarray] = {}
    symbols: dict[str, int] = {}
    for name in g.inputs:
        value, arr = g.values[name], np.asarray(feeds[name])
        if arr.dtype != value.dtype.np_dtype and not (value.dtype.name == "string" and arr.dtype.kind in "OUS"):
            raise InterpretError(f"input '{name}' must be {value.dtype} ({value.dtype.np_dtype}), got {arr.dtype}")
        if value.shape is not None:
            if arr.ndim != len(value.shape):
                raise InterpretError(f"input '{name}' must have rank {len(value.shape)} "
                                     f"{list(value.shape)}, got shape {list(arr.shape)}")
            for dim, actual in zip(value.shape, arr.shape):
                if isinstance(dim, int) and dim != actual:
                    raise InterpretError(f"input '{name}' must have shape {list(value.shape)}, got {list(arr.shape)}")
                if isinstance(dim, str) and symbols.setdefault(dim, actual) != actual:
                    raise InterpretError(f"input '{name}': dim '{dim}' is {actual} but another input set it to "
                                         f"{symbols[dim]}")
                bound = g.dim_bounds.get(dim) if isinstance(dim, str) else None
                if bound is not None and actual > bound:
                    raise InterpretError(f"input '{name}': dim '{dim}'={actual} exceeds its bound {bound}")
        env[name] = arr
    return env


def run(g: Graph, feeds: Mapping[str, np.ndarray], outputs: list[str] | None = None,
        keep_all: bool = False, observe: Callable[[Node, list], None] | None = None) -> dict[str, np.ndarray]:
    """Execute g on feeds; return the graph outputs (or `outputs`, or every value with keep_all).

    observe(node, inputs), when given, sees every node's input arrays before it runs (calibration
    reads the activations of the linear layers through it)."""
    env = bind_inputs(g, feeds)
    for v in g.constants():
        env[v.name] = v.const
    wanted = list(outputs or g.outputs)
    last_use: dict[str, int] = {}
    if not keep_all:
        for i, n in enumerate(g.nodes):
            for name in n.inputs:
                last_use[name] = i
    keep = set(wanted) | set(g.inputs) | {v.name for v in g.constants()}
    for i, n in enumerate(g.nodes):
        args = []
        for name in n.inputs:
            if not name:
                args.append(None)
            elif name in env:
                args.append(env[name])
            else:
                raise InterpretError(f"input '{name}' has not been computed", node=n.name, op=n.op_id,
                                     hint="the graph is not in topological order or the value is dangling")
        if observe is not None:
            observe(n, args)
        results = run_node(n, args)
        if len(results) < len([o for o in n.outputs if o]):
            raise InterpretError(f"produced {len(results)} outputs, the node declares {len(n.outputs)}",
                                 node=n.name, op=n.op_id)
        for name, arr in zip(n.outputs, results):
            if name:
                env[name] = arr
        if not keep_all:
            for name in n.inputs:
                if name and last_use.get(name) == i and name not in keep:
                    env.pop(name, None)
    if keep_all:
        return env
    return {name: env[name] for name in wanted}
