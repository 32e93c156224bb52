"""Recognize a decoder's signature, so the artifact can offer a stateful session.

A graph is a decoder when its inputs are token ids [batch, seq], optionally an attention mask
[batch, past+seq] and position ids [batch, seq], and pairs of KV-cache tensors whose past
input [.., past, ..] comes back as a present output [.., past+seq, ..]; and its outputs are the
logits [batch, seq, vocab] and those presents. That is the shape of every causal LM exported
with a cache (HF `past_key_values.N.key` -> `present.N.key`, or `past_key_N` -> `present_key_N`).
The session then owns the cache and feeds the graph; the graph itself is unchanged.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from ..ir import dims
from ..ir.quant import QuantSpec


@dataclass(frozen=True)
class CachePair:
    past: str           # graph input
    present: str        # graph output
    axis: int           # the sequence axis


@dataclass(frozen=True)
class Decoder:
    tokens: str
    logits: str
    batch: str | None   # symbol of the batch dim (bound to 1 by the session), or None if fixed 1
    seq: str            # symbol of the new tokens' length
    past: str           # symbol of the cached length
    caches: tuple[CachePair, ...]
    mask: str | None = None
    positions: str | None = None
    # the cache's storage: the graph's float dtype, or (once quantized caches land) a QuantSpec
    # saying how the stored integers map back to it, e.g. int8 per (head, position)
    kv_quant: QuantSpec | None = None

    def manifest(self) -> dict:
        record = asdict(self)
        record["kv_quant"] = self.kv_quant.describe() if self.kv_quant else None
        return record


class NotADecoder(Exception):
    """Why the graph has no session API (recorded in the manifest, not an error)."""


def _pair_name(past: str) -> str:
    return re.sub(r"past_key_values|past", "present", past, count=1)


def _is_int(v) -> bool:
    return v.dtype.name in ("int64", "int32")


def detect(graph) -> Decoder:
    """The decoder signature of `graph`, or NotADecoder saying what is missing."""
    values = graph.values
    ints2 = [x for x in graph.inputs if _is_int(values[x]) and len(values[x].shape) == 2]
    tokens = next((x for x in ints2 if "input_ids" in x), ints2[0] if len(ints2) == 1 else None)
    if tokens is None:
        raise NotADecoder("no token-id input (an int64 [batch, seq] input named input_ids)")
    batch, seq = values[tokens].shape
    if not (isinstance(seq, str) and dims.parse(seq).is_symbol) or (batch != 1 and not isinstance(batch, str)):
        raise NotADecoder(f"'{tokens}' is not [batch, seq] with a symbolic seq")
    caches, past_sym = [], None
    for x in graph.inputs:
        if x == tokens or not values[x].dtype.name.startswith("fp") or len(values[x].shape) < 3:
            continue
        out = _pair_name(x)
        if out == x or out not in graph.outputs:
            raise NotADecoder(f"float input '{x}' is not a past cache with a matching present output")
        pin, pout = values[x].shape, values[out].shape
        axis = next((a for a, (i, o) in enumerate(zip(pin, pout)) if i != o), None)
        if len(pin) != len(pout) or axis is None or not isinstance(pin[axis], str):
            raise NotADecoder(f"'{x}' -> '{out}' does not grow along one axis")
        p = pin[axis]
        if dims.parse(pout[axis]) != dims.parse(f"{p}+{seq}") or (past_sym not in (None, p)):
            raise NotADecoder(f"'{out}' axis {axis} is {pout[axis]}, not {p}+{seq}")
        past_sym = p
        caches.append(CachePair(x, out, axis))
    if not caches:
        raise NotADecoder("no KV-cache inputs (past_* -> present_*)")
    mask = positions = None
    for x in graph.inputs:
        if x == tokens or any(c.past == x for c in caches):
            continue
        shape = values[x].shape
        if len(shape) == 2 and dims.parse(str(shape[1])) == dims.parse(f"{past_sym}+{seq}") and "mask" in x:
            mask = x
        elif len(shape) == 2 and shape[1] == seq and "position" in x and _is_int(values[x]):
            positions = x
        else:
            raise NotADecoder(f"input '{x}' is neither tokens, an attention mask, position ids nor a cache")
    logits = [y for y in graph.outputs if not any(c.present == y for c in caches)]
    if len(logits) != 1 or len(values[logits[0]].shape) != 3 or values[logits[0]].shape[1] != seq:
        raise NotADecoder(f"outputs besides the caches are {logits}; a decoder has only logits [batch, seq, vocab]")
    if not isinstance(values[logits[0]].shape[2], int):
        raise NotADecoder("the vocabulary size (last dim of the logits) is not fixed")
    for x in graph.inputs + graph.outputs:       # every other dim must be fixed or one of the three
        for sym in dims.symbols_of(values[x].shape) - {batch, seq, past_sym}:
            raise NotADecoder(f"'{x}' has a dim '{sym}' the session cannot set")
    return Decoder(tokens, logits[0], batch if isinstance(batch, str) else None, seq, past_sym, tuple(caches),
                   mask, positions)
