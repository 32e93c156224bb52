"""infer_shapes: recompute element types and shapes (symbolic dims kept) from op rules."""

from __future__ import annotations

from ..ir.graph import Graph
from ..ir.shape_rules import fill_types
from .registry import register_pass


@register_pass("infer_shapes")
def infer_shapes(g: Graph) -> Graph:
    """Recompute dtypes and shapes of every node output; keep what the rules cannot derive."""
    fill_types(g, overwrite=True)
    return g
