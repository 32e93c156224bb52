"""BERT encoder: the bidirectional counterpart to the Llama decoder.

It brings what Llama lacks: LayerNormalization (opset 17 op), exact Erf GELU,
biased projections, learned position/token-type embeddings and a padding mask
supplied as a graph input. Initializer names follow HF `BertModel`; projection
weights are stored [in, out] so they feed MatMul directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import onnx
from onnx import TensorProto

from .common import FLOAT_MIN, GraphBuilder


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 128
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_position: int = 64
    type_vocab_size: int = 2
    ln_eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be a multiple of num_heads")


EMBEDDING_STD = 0.02
"""HF init; harmless here because LayerNorm rescales the embedding sum."""


def make_bert(cfg: BertConfig = BertConfig(), seed: int = 0) -> onnx.ModelProto:
    """input_ids, attention_mask, token_type_ids (int64 ["batch","seq"]) ->
    last_hidden_state ["batch","seq",hidden].

    attention_mask is 1 for real tokens and 0 for padding; padded keys get
    (1 - mask) * float32.min added to their scores, as HF's
    get_extended_attention_mask does.
    """
    d = cfg.hidden_size
    gb = GraphBuilder(seed)
    ids = gb.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    attention_mask = gb.input("attention_mask", TensorProto.INT64, ["batch", "seq"])
    token_type_ids = gb.input("token_type_ids", TensorProto.INT64, ["batch", "seq"])
    batch_seq = gb.op("Shape", ids)

    with gb.scope("embeddings"):
        word = gb.normal("embeddings.word_embeddings.weight", (cfg.vocab_size, d), EMBEDDING_STD)
        position = gb.normal("embeddings.position_embeddings.weight", (cfg.max_position, d), EMBEDDING_STD)
        token_type = gb.normal("embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, d), EMBEDDING_STD)
        seq = gb.op("Gather", batch_seq, gb.const(1), axis=0)
        position_ids = gb.unsqueeze(gb.op("Range", gb.const(0), seq, gb.const(1)), (0,))
        emb = gb.op("Add", gb.op("Gather", word, ids, axis=0), gb.op("Gather", token_type, token_type_ids, axis=0))
        emb = gb.op("Add", emb, gb.op("Gather", position, position_ids, axis=0))
        h = _layer_norm(gb, emb, "embeddings.LayerNorm", cfg)

    with gb.scope("extended_attention_mask"):
        keep = gb.op("Cast", gb.unsqueeze(attention_mask, (1, 2)), to=TensorProto.FLOAT)  # [b, 1, 1, seq]
        mask = gb.op("Mul", gb.op("Sub", gb.fconst(1.0), keep), gb.fconst(FLOAT_MIN))

    heads_shape = gb.op("Concat", batch_seq, gb.const([cfg.num_heads, d // cfg.num_heads]), axis=0)
    merged_shape = gb.op("Concat", batch_seq, gb.const([-1]), axis=0)
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}"
        with gb.scope(p):
            ctx = _self_attention(gb, cfg, p, h, mask, heads_shape, merged_shape)
            attn = _dense(gb, ctx, f"{p}.attention.output.dense", d, d)
            h = _layer_norm(gb, gb.op("Add", attn, h), f"{p}.attention.output.LayerNorm", cfg)
            inter = _gelu(gb, _dense(gb, h, f"{p}.intermediate.dense", d, cfg.intermediate_size))
            out = _dense(gb, inter, f"{p}.output.dense", cfg.intermediate_size, d)
            h = _layer_norm(gb, gb.op("Add", out, h), f"{p}.output.LayerNorm", cfg)

    gb.output(h, "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", d])
    return gb.build("bert")


def _dense(gb: GraphBuilder, x: str, name: str, fan_in: int, fan_out: int) -> str:
    w = gb.linear_weight(f"{name}.weight", fan_in, fan_out)
    b = gb.normal(f"{name}.bias", (fan_out,), 0.1)
    return gb.op("Add", gb.op("MatMul", x, w), b)


def _layer_norm(gb: GraphBuilder, x: str, name: str, cfg: BertConfig) -> str:
    gamma = gb.norm_gamma(f"{name}.weight", cfg.hidden_size)
    beta = gb.normal(f"{name}.bias", (cfg.hidden_size,), 0.1)
    return gb.op("LayerNormalization", x, gamma, beta, axis=-1, epsilon=cfg.ln_eps)


def _gelu(gb: GraphBuilder, x: str) -> str:
    """Exact GELU as HF writes it: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    erf = gb.op("Erf", gb.op("Div", x, gb.fconst(math.sqrt(2.0))))
    return gb.op("Mul", gb.op("Mul", x, gb.fconst(0.5)), gb.op("Add", erf, gb.fconst(1.0)))


def _self_attention(
    gb: GraphBuilder, cfg: BertConfig, p: str, x: str, mask: str, heads_shape: str, merged_shape: str
) -> str:
    d, hd = cfg.hidden_size, cfg.hidden_size // cfg.num_heads
    s = f"{p}.attention.self"
    q = gb.reshape(_dense(gb, x, f"{s}.query", d, d), heads_shape)  # [b, seq, heads, hd]
    k = gb.reshape(_dense(gb, x, f"{s}.key", d, d), heads_shape)
    v = gb.reshape(_dense(gb, x, f"{s}.value", d, d), heads_shape)
    q, k_t, v = gb.transpose(q, (0, 2, 1, 3)), gb.transpose(k, (0, 2, 3, 1)), gb.transpose(v, (0, 2, 1, 3))
    scores = gb.op("Div", gb.op("MatMul", q, k_t), gb.fconst(math.sqrt(hd)))
    probs = gb.op("Softmax", gb.op("Add", scores, mask), axis=-1)
    ctx = gb.transpose(gb.op("MatMul", probs, v), (0, 2, 1, 3))
    return gb.reshape(ctx, merged_shape)
