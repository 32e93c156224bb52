"""use_file_activations: imported QDQ layers compute on the file's own int8 activations.

import_quantized records, on a QLinear whose input is DequantizeLinear(xq, scale, zero_point) with
one scale and zero point, where the integers come from (attrs act_file_*). This rewires the layer
to read xq itself, with activations="int8-file": y = scale * sum_k (xq - zero_point) * W, which is
what onnxruntime computes from the same file (its integer kernels, or the float product of the
dequantized values), instead of quantizing the dequantized activations again per token.

Not a pipeline pass: it depends on the build's options (`--activations dynamic` keeps per-token
activations, and a Hadamard rotation changes the activations the file's scales were set for).
"""

from __future__ import annotations

from ..ir.graph import Graph
from .eliminate_dead import eliminate_dead


def use_file_activations(g: Graph) -> list[str]:
    """Rewire every recorded QLinear; the names of the layers changed."""
    changed = []
    for n in g.nodes:
        if n.op == "QLinear" and n.domain == "qcompile" and n.attrs.get("act_file_input"):
            n.inputs[0] = n.attrs["act_file_input"]
            n.attrs["activations"] = "int8-file"
            changed.append(n.name)
    if changed:
        eliminate_dead(g)       # the DequantizeLinear nodes nothing reads any more
    return changed


def file_activation_layers(g: Graph) -> list[str]:
    """Layers that could read the file's activations but do not (yet)."""
    return [n.name for n in g.nodes if n.op == "QLinear" and n.attrs.get("act_file_input")
            and n.attrs.get("activations") != "int8-file"]
