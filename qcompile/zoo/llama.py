"""Llama-style decoder, decomposed into primitive ONNX ops as torch.onnx.export does.

Nothing is fused (no RMSNorm/Rotary/Attention contrib ops), the sequence length
stays symbolic, and everything shape-dependent (positions, rotary tables, causal
mask) is computed in-graph from Shape, so a compiler sees the same patterns it
will meet in real exported LLMs.

Initializer names follow HF `LlamaForCausalLM` (`model.layers.0.self_attn.q_proj.weight`,
...), but projection weights are stored [in, out] so they feed MatMul directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from .common import FLOAT_MIN, GraphBuilder


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 256
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int | None = None
    """Defaults to hidden_size // num_heads."""
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    tie_embeddings: bool = True
    max_position: int = 128
    """Not needed by the graph (rotary tables are computed from positions); kept
    so the HF export and callers choosing sequence lengths share one config."""

    def __post_init__(self) -> None:
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        if int(self.head_dim) % 2:
            raise ValueError("head_dim must be even for rotary embeddings")


def rope_inv_freq(cfg: LlamaConfig) -> np.ndarray:
    """HF default rotary frequencies: theta ** (-2i / head_dim)."""
    hd = int(cfg.head_dim)
    return (1.0 / cfg.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd)).astype(np.float32)


@dataclass(frozen=True)
class _Shared:
    """Per-forward tensors every layer reuses (computed once, like an exporter's CSE)."""

    cos: str  # [1, 1, seq, head_dim]
    sin: str
    mask: str  # [seq, past+seq] additive causal mask
    q_shape: str  # [batch, seq, heads, head_dim]
    kv_shape: str  # [batch, seq, kv_heads, head_dim]
    merged_shape: str  # [batch, seq, -1]


def make_llama(
    cfg: LlamaConfig = LlamaConfig(), seed: int = 0, with_kv_cache: bool = False
) -> onnx.ModelProto:
    """input_ids["batch","seq"] -> logits["batch","seq",vocab].

    With `with_kv_cache`, each layer i also takes past_key_i/past_value_i
    ["batch", kv_heads, "past", head_dim] and returns present_key_i/present_value_i
    ["batch", kv_heads, "past+seq", head_dim] (post-rotary keys, before repeat_kv,
    as HF caches them). Weights depend only on `cfg` and `seed`, so the cached and
    uncached variants of one seed compute the same function.
    """
    hd, kv = int(cfg.head_dim), cfg.num_kv_heads
    gb = GraphBuilder(seed)
    ids = gb.input("input_ids", TensorProto.INT64, ["batch", "seq"])
    pasts = [
        (
            gb.input(f"past_key_{i}", TensorProto.FLOAT, ["batch", kv, "past", hd]),
            gb.input(f"past_value_{i}", TensorProto.FLOAT, ["batch", kv, "past", hd]),
        )
        for i in range(cfg.num_layers if with_kv_cache else 0)
    ]

    with gb.scope("model"):
        shared = _shared_tensors(gb, cfg, ids, pasts[0][0] if pasts else None)
        embed = gb.normal("model.embed_tokens.weight", (cfg.vocab_size, cfg.hidden_size), cfg.hidden_size**-0.5)
        h = gb.op("Gather", embed, ids, axis=0)
        presents = []
        for i in range(cfg.num_layers):
            with gb.scope(f"layers.{i}"):
                h, present = _decoder_layer(gb, cfg, i, h, shared, pasts[i] if pasts else None)
            presents.append(present)
        h = _rms_norm(gb, h, "model.norm.weight", cfg)

    with gb.scope("lm_head"):
        if cfg.tie_embeddings:
            head = gb.transpose(embed, (1, 0))
        else:
            head = gb.linear_weight("lm_head.weight", cfg.hidden_size, cfg.vocab_size)
        logits = gb.op("MatMul", h, head)

    gb.output(logits, "logits", TensorProto.FLOAT, ["batch", "seq", cfg.vocab_size])
    for i, (k, v) in enumerate(presents if with_kv_cache else []):
        gb.output(k, f"present_key_{i}", TensorProto.FLOAT, ["batch", kv, "past+seq", hd])
        gb.output(v, f"present_value_{i}", TensorProto.FLOAT, ["batch", kv, "past+seq", hd])
    return gb.build("llama_kv" if with_kv_cache else "llama")


def _shared_tensors(gb: GraphBuilder, cfg: LlamaConfig, ids: str, past_key: str | None) -> _Shared:
    """Positions, rotary tables, causal mask and reshape targets, all from Shape."""
    batch_seq = gb.op("Shape", ids)
    seq = gb.op("Gather", batch_seq, gb.const(1), axis=0)
    zero, one = gb.const(0), gb.const(1)
    if past_key is None:
        q_pos = gb.op("Range", zero, seq, one)
        k_pos = q_pos
    else:
        past = gb.shape_dim(past_key, 2)
        total = gb.op("Add", past, seq)
        q_pos = gb.op("Range", past, total, one)
        k_pos = gb.op("Range", zero, total, one)

    with gb.scope("rotary_emb"):
        inv_freq = gb.param("model.rotary_emb.inv_freq", rope_inv_freq(cfg))
        pos = gb.unsqueeze(gb.op("Cast", q_pos, to=TensorProto.FLOAT), (1,))
        freqs = gb.op("Mul", pos, inv_freq)  # [seq, head_dim / 2]
        emb = gb.op("Concat", freqs, freqs, axis=-1)
        cos = gb.unsqueeze(gb.op("Cos", emb), (0, 1))
        sin = gb.unsqueeze(gb.op("Sin", emb), (0, 1))

    with gb.scope("causal_mask"):
        # Query i sits at absolute position past+i and must not see later keys.
        future = gb.op("Less", gb.unsqueeze(q_pos, (1,)), gb.unsqueeze(k_pos, (0,)))
        mask = gb.op("Where", future, gb.fconst(FLOAT_MIN), gb.fconst(0.0))

    def heads_shape(n: int) -> str:
        return gb.op("Concat", batch_seq, gb.const([n, int(cfg.head_dim)]), axis=0)

    return _Shared(
        cos=cos,
        sin=sin,
        mask=mask,
        q_shape=heads_shape(cfg.num_heads),
        kv_shape=heads_shape(cfg.num_kv_heads),
        merged_shape=gb.op("Concat", batch_seq, gb.const([-1]), axis=0),
    )


def _decoder_layer(
    gb: GraphBuilder, cfg: LlamaConfig, i: int, x: str, shared: _Shared, past: tuple[str, str] | None
) -> tuple[str, tuple[str, str]]:
    p = f"model.layers.{i}"
    with gb.scope("self_attn"):
        normed = _rms_norm(gb, x, f"{p}.input_layernorm.weight", cfg)
        attn, present = _attention(gb, cfg, p, normed, shared, past)
    h = gb.op("Add", x, attn)
    with gb.scope("mlp"):
        normed = _rms_norm(gb, h, f"{p}.post_attention_layernorm.weight", cfg)
        out = gb.op("Add", h, _mlp(gb, cfg, p, normed))
    return out, present


def _rms_norm(gb: GraphBuilder, x: str, weight_name: str, cfg: LlamaConfig) -> str:
    """x * rsqrt(mean(x^2) + eps) * gamma; rsqrt exports as Sqrt + Reciprocal."""
    gamma = gb.norm_gamma(weight_name, cfg.hidden_size)
    var = gb.op("ReduceMean", gb.op("Pow", x, gb.fconst(2.0)), gb.const([-1]), keepdims=1)
    inv = gb.op("Reciprocal", gb.op("Sqrt", gb.op("Add", var, gb.fconst(cfg.rms_eps))))
    return gb.op("Mul", gamma, gb.op("Mul", x, inv))


def _attention(
    gb: GraphBuilder, cfg: LlamaConfig, p: str, x: str, shared: _Shared, past: tuple[str, str] | None
) -> tuple[str, tuple[str, str]]:
    hd, h, kv = int(cfg.head_dim), cfg.num_heads, cfg.num_kv_heads
    a = f"{p}.self_attn"
    q = gb.op("MatMul", x, gb.linear_weight(f"{a}.q_proj.weight", cfg.hidden_size, h * hd))
    k = gb.op("MatMul", x, gb.linear_weight(f"{a}.k_proj.weight", cfg.hidden_size, kv * hd))
    v = gb.op("MatMul", x, gb.linear_weight(f"{a}.v_proj.weight", cfg.hidden_size, kv * hd))

    # [batch, seq, n*hd] -> [batch, n, seq, hd]
    q = gb.transpose(gb.reshape(q, shared.q_shape), (0, 2, 1, 3))
    k = gb.transpose(gb.reshape(k, shared.kv_shape), (0, 2, 1, 3))
    v = gb.transpose(gb.reshape(v, shared.kv_shape), (0, 2, 1, 3))
    q, k = _apply_rotary(gb, q, shared, hd), _apply_rotary(gb, k, shared, hd)
    if past is not None:
        k = gb.op("Concat", past[0], k, axis=2)
        v = gb.op("Concat", past[1], v, axis=2)
    present = (k, v)
    k, v = _repeat_kv(gb, k, h // kv, h, hd), _repeat_kv(gb, v, h // kv, h, hd)

    scores = gb.op("Mul", gb.op("MatMul", q, gb.transpose(k, (0, 1, 3, 2))), gb.fconst(hd**-0.5))
    probs = gb.op("Softmax", gb.op("Add", scores, shared.mask), axis=-1)
    ctx = gb.transpose(gb.op("MatMul", probs, v), (0, 2, 1, 3))
    ctx = gb.reshape(ctx, shared.merged_shape)
    out = gb.op("MatMul", ctx, gb.linear_weight(f"{a}.o_proj.weight", h * hd, cfg.hidden_size))
    return out, present


def _apply_rotary(gb: GraphBuilder, x: str, shared: _Shared, hd: int) -> str:
    """x * cos + rotate_half(x) * sin, rotate_half([a, b]) = [-b, a] (HF convention)."""
    axis = gb.const([-1])
    first = gb.op("Slice", x, gb.const([0]), gb.const([hd // 2]), axis)
    second = gb.op("Slice", x, gb.const([hd // 2]), gb.const([np.iinfo(np.int64).max]), axis)
    rotated = gb.op("Concat", gb.op("Neg", second), first, axis=-1)
    return gb.op("Add", gb.op("Mul", x, shared.cos), gb.op("Mul", rotated, shared.sin))


def _repeat_kv(gb: GraphBuilder, x: str, n_rep: int, heads: int, hd: int) -> str:
    """[b, kv, t, hd] -> [b, kv*n_rep, t, hd], each kv head repeated n_rep times in place."""
    if n_rep == 1:
        return x
    expanded = gb.op("Expand", gb.unsqueeze(x, (2,)), gb.const([1, 1, n_rep, 1, 1]))
    return gb.reshape(expanded, (0, heads, -1, hd))


def _mlp(gb: GraphBuilder, cfg: LlamaConfig, p: str, x: str) -> str:
    """down(silu(gate(x)) * up(x)), with SiLU written as x * Sigmoid(x)."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    gate = gb.op("MatMul", x, gb.linear_weight(f"{p}.mlp.gate_proj.weight", d, f))
    up = gb.op("MatMul", x, gb.linear_weight(f"{p}.mlp.up_proj.weight", d, f))
    act = gb.op("Mul", gb.op("Mul", gate, gb.op("Sigmoid", gate)), up)
    return gb.op("MatMul", act, gb.linear_weight(f"{p}.mlp.down_proj.weight", f, d))
