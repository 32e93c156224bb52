"""eliminate_dead: drop nodes and values that no graph output depends on."""

from __future__ import annotations

from ..ir.graph import Graph
from .registry import register_pass


@register_pass("eliminate_dead")
def eliminate_dead(g: Graph) -> Graph:
    """Remove nodes whose outputs never reach a graph output, then unused values."""
    producer = g.producers()
    live_values = set(g.outputs)
    live_nodes: set[int] = set()
    work = list(g.outputs)
    while work:
        node = producer.get(work.pop())
        if node is None or id(node) in live_nodes:
            continue
        live_nodes.add(id(node))
        for name in node.inputs:
            if name and name not in live_values:
                live_values.add(name)
                work.append(name)
    g.nodes = [n for n in g.nodes if id(n) in live_nodes]
    g.prune_values()
    return g
