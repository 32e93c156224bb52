"""rotate: an orthogonal Hadamard rotation of the residual stream, folded into the weights (QuaRot).

With Q = H / sqrt(d) (d the hidden size), every residual-stream value h becomes h Q: the
embedding table E becomes E Q, every linear layer that writes into the stream (o_proj,
down_proj) W -> W Q, and every one that reads it through a norm (q/k/v, gate/up, LM head)
W -> Qᵀ W. A scale-free RMSNorm commutes with Q (||h Q|| = ||h||), so the network computes the
same function while outlier channels are spread over all of them, which is what makes low-bit
weights and activations usable. Run fold_norms first: a norm with a gamma does not commute.

The stream is found by walking from the embedding Gather through the residual Adds; any reader
that is not a norm or a residual Add makes the pass refuse, naming it, rather than guess.

Writers fed by a gated product (the MLP's down_proj, whose input has the worst outliers) also get
an online rotation: x -> qcompile.Hadamard(x) = x H_k / sqrt(k) at run time (an FWHT plus a small
known factor), with its inverse folded into the weight: W -> (H_k / sqrt(k))ᵀ W.
"""

from __future__ import annotations

import numpy as np

from ..errors import QCompileError
from ..ir.graph import Graph, Node
from ..quant.hadamard import NoHadamardError, kron_factors, orthogonal
from .linear_weights import const_weight, k_axis, readers_of, set_const_input
from .registry import register_pass


class RotateError(QCompileError):
    phase = "rotate"


def residual_stream(g: Graph) -> tuple[Node, list[Node], list[Node]]:
    """(embedding Gather, reader linears, writer linears) of the residual stream."""
    producers, consumers = g.producers(), g.consumers()
    embeds = [n for n in g.nodes if n.op == "Gather" and g.values[n.inputs[0]].const is not None
              and g.values[n.inputs[0]].rank == 2]
    if len(embeds) != 1:
        raise RotateError(f"expected one embedding Gather, found {len(embeds)}")
    readers: list[Node] = []
    writers: list[Node] = []
    todo, seen = [embeds[0].outputs[0]], set()
    while todo:
        value = todo.pop()
        if value in seen:
            continue
        seen.add(value)
        if value in g.outputs:
            raise RotateError(f"the residual stream value '{value}' is a graph output")
        for node in consumers.get(value, []):
            if node.op == "Add" and not node.domain:
                other = node.inputs[1] if node.inputs[0] == value else node.inputs[0]
                if other not in seen:
                    writer = producers.get(other)
                    if writer is None or const_weight(g, writer) is None:
                        raise RotateError("a residual Add's other operand is not a linear layer's output",
                                          node=node.name, op=node.op)
                    writers.append(writer)
                todo.append(node.outputs[0])
            elif node.op == "RMSNormalization" and not node.domain:
                gamma = g.values[node.inputs[1]].const
                if gamma is None or not np.all(gamma == 1):
                    raise RotateError("the norm has a gamma, which does not commute with a rotation",
                                      node=node.name, op=node.op, hint="run fold_norms first")
                for reader in consumers.get(node.outputs[0], []):
                    if const_weight(g, reader) is None or reader.inputs[0] != node.outputs[0]:
                        raise RotateError("a normalized value is read by something other than a linear layer",
                                          node=reader.name, op=reader.op)
                    readers.append(reader)
            else:
                raise RotateError("the residual stream is read by an op the rotation cannot pass",
                                  node=node.name, op=node.op)
    return embeds[0], readers, writers


@register_pass("rotate")
def rotate(g: Graph) -> Graph:
    """Rotate the residual stream by a Hadamard matrix folded into embedding and linear weights."""
    embed, readers, writers = residual_stream(g)
    table = g.values[embed.inputs[0]].const
    d = table.shape[1]
    for node in readers + writers:
        w, k = const_weight(g, node), k_axis(node)
        if w.shape[k if node in readers else 1 - k] != d:
            raise RotateError(f"the layer's weight {list(w.shape)} does not meet the residual width {d}",
                              node=node.name, op=node.op)
    q = orthogonal(d)
    shared = readers_of(g)
    set_const_input(g, embed, 0, (table @ q).astype(table.dtype), shared, "rotated")
    for node in readers:                       # y = (h Q) (Qᵀ W)
        w = const_weight(g, node)
        rotated = q.T @ w if k_axis(node) == 0 else w @ q
        set_const_input(g, node, 1, rotated.astype(w.dtype), shared, "rotated")
    for node in writers:                       # (x W + b) Q: columns of W, or rows of a transposed one
        w = const_weight(g, node)
        rotated = w @ q if k_axis(node) == 0 else q.T @ w
        set_const_input(g, node, 1, rotated.astype(w.dtype), shared, "rotated")
        bias = g.values[node.inputs[2]].const if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2] else None
        if bias is not None:
            node.inputs[2] = g.add_const(f"{node.inputs[2]}_rotated", (np.broadcast_to(bias, (d,)) @ q)
                                         .astype(bias.dtype)).name
    for node in writers:
        _online_hadamard(g, node, shared)
    g.prune_values()
    return g


def _online_hadamard(g: Graph, node: Node, shared: dict[str, int]) -> None:
    """Rotate a gated-MLP down projection's input at run time, its inverse folded into W."""
    producer = g.producers().get(node.inputs[0])
    if producer is None or producer.op != "Mul" or k_axis(node) != 0:
        return
    x = node.inputs[0]
    k = g.values[x].shape[-1]
    try:
        small, _ = kron_factors(k)
    except NoHadamardError as exc:
        raise RotateError(f"no Hadamard matrix of order {k} for the online rotation", node=node.name,
                          op=node.op) from exc
    mix = g.add_const(f"{node.name}_hadamard_mix", (small / np.sqrt(k)).astype(np.float32)).name
    rotated = g.unique_name(f"{x}_hadamard")
    g.add_value(rotated, g.values[x].dtype, g.values[x].shape)
    online = g.add_node("Hadamard", [x, mix], [rotated], name=f"{node.name}/hadamard", domain="qcompile")
    g.nodes.remove(online)
    g.nodes.insert(g.nodes.index(node), online)
    node.inputs[0] = rotated
    w = const_weight(g, node)
    set_const_input(g, node, 1, (orthogonal(k).T @ w).astype(w.dtype), shared, "hadamard")
