"""qcompile.zoo models: valid ONNX, runnable at several shapes, and numerically
equal to independent float64 numpy implementations that only share the
initializer names with the generators."""

from __future__ import annotations

import functools
import importlib.util
import math
import sys
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from qcompile.zoo import BertConfig, LlamaConfig, export_llama_torch, make_bert, make_llama, make_mlp, op_histogram

UNTIED = LlamaConfig(tie_embeddings=False, num_kv_heads=4)  # also covers n_rep == 1
MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    "mlp": make_mlp,
    "llama": make_llama,
    "llama_untied": lambda: make_llama(UNTIED, seed=3),
    "llama_kv": lambda: make_llama(with_kv_cache=True),
    "bert": make_bert,
}
LLAMA_OPS = set(
    "MatMul Add Sub Mul Div Pow Sqrt Reciprocal Neg Exp Sigmoid Softmax ReduceMean Gather Reshape Transpose "
    "Unsqueeze Squeeze Concat Slice Shape ConstantOfShape Expand Cast Where Equal Less Range Trilu Constant "
    "Identity Cos Sin".split()
)
BATCHES, SEQS = (1, 2), (1, 3, 7)


@functools.cache
def model(name: str) -> onnx.ModelProto:
    return MODELS[name]()


@functools.cache
def session(name: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model(name).SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(name: str, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    sess = session(name)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@functools.cache
def weights(name: str) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model(name).graph.initializer}


def assert_close(actual: np.ndarray, ref: np.ndarray) -> None:
    assert actual.shape == ref.shape
    err, tol = np.abs(actual - ref).max(), 1e-4 * max(1.0, np.abs(ref).max())
    assert err <= tol, f"max abs error {err:.3g} > {tol:.3g}"


def token_ids(batch: int, seq: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, seq), dtype=np.int64)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# Reference implementations ---------------------------------------------------


def ref_mlp(w: dict[str, np.ndarray], x: np.ndarray, n_hidden: int) -> np.ndarray:
    h = x.astype(np.float64)
    for i in range(n_hidden):  # Gemm layers store weight [out, in]
        h = np.maximum(h @ w[f"layers.{i}.weight"].T + w[f"layers.{i}.bias"], 0.0)
    return h @ w[f"layers.{n_hidden}.weight"] + w[f"layers.{n_hidden}.bias"]


def ref_llama(
    w: dict[str, np.ndarray], cfg: LlamaConfig, ids: np.ndarray, past: list[tuple[np.ndarray, np.ndarray]] | None = None
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    b, s = ids.shape
    hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    start = past[0][0].shape[2] if past else 0
    pos = np.arange(start, start + s)
    angles = pos[:, None] * cfg.rope_theta ** (-np.arange(0, hd, 2) / hd)
    cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
    visible = np.arange(start + s)[None, :] <= pos[:, None]

    def rms(x: np.ndarray, gamma: np.ndarray) -> np.ndarray:
        return gamma * x / np.sqrt((x**2).mean(-1, keepdims=True) + cfg.rms_eps)

    def rope(x: np.ndarray) -> np.ndarray:
        return x * cos + np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1) * sin

    def heads(x: np.ndarray, n: int) -> np.ndarray:
        return x.reshape(b, s, n, hd).transpose(0, 2, 1, 3)

    x = w["model.embed_tokens.weight"][ids]
    presents = []
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        q = rope(heads(h @ w[p + "self_attn.q_proj.weight"], nh))
        k = rope(heads(h @ w[p + "self_attn.k_proj.weight"], nkv))
        v = heads(h @ w[p + "self_attn.v_proj.weight"], nkv)
        if past:
            k, v = np.concatenate([past[i][0], k], 2), np.concatenate([past[i][1], v], 2)
        presents.append((k, v))
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        scores = np.where(visible, q @ k.swapaxes(-1, -2) / np.sqrt(hd), -np.inf)
        ctx = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(b, s, nh * hd)
        x = x + ctx @ w[p + "self_attn.o_proj.weight"]
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        gate, up = h @ w[p + "mlp.gate_proj.weight"], h @ w[p + "mlp.up_proj.weight"]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"]
    head = w["model.embed_tokens.weight"].T if cfg.tie_embeddings else w["lm_head.weight"]
    return rms(x, w["model.norm.weight"]) @ head, presents


def ref_bert(
    w: dict[str, np.ndarray], cfg: BertConfig, ids: np.ndarray, mask: np.ndarray, types: np.ndarray
) -> np.ndarray:
    b, s = ids.shape
    nh, hd = cfg.num_heads, cfg.hidden_size // cfg.num_heads
    erf = np.vectorize(math.erf)

    def ln(x: np.ndarray, name: str) -> np.ndarray:
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + cfg.ln_eps) * w[name + ".weight"] + w[name + ".bias"]

    def dense(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[name + ".weight"] + w[name + ".bias"]

    def heads(x: np.ndarray) -> np.ndarray:
        return x.reshape(b, s, nh, hd).transpose(0, 2, 1, 3)

    e = "embeddings."
    x = w[e + "word_embeddings.weight"][ids] + w[e + "token_type_embeddings.weight"][types]
    x = ln(x + w[e + "position_embeddings.weight"][:s], e + "LayerNorm")
    for i in range(cfg.num_layers):
        p = f"encoder.layer.{i}."
        q, k, v = (heads(dense(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
        scores = np.where(mask[:, None, None, :] == 1, q @ k.swapaxes(-1, -2) / np.sqrt(hd), -np.inf)
        ctx = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(b, s, cfg.hidden_size)
        x = ln(dense(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        inner = dense(x, p + "intermediate.dense")
        inner = 0.5 * inner * (1 + erf(inner / np.sqrt(2)))
        x = ln(dense(inner, p + "output.dense") + x, p + "output.LayerNorm")
    return x


def empty_past(cfg: LlamaConfig, batch: int) -> dict[str, np.ndarray]:
    shape = (batch, cfg.num_kv_heads, 0, cfg.head_dim)
    return {
        f"past_{kind}_{i}": np.zeros(shape, np.float32) for i in range(cfg.num_layers) for kind in ("key", "value")
    }


def presents_as_past(out: dict[str, np.ndarray], cfg: LlamaConfig) -> dict[str, np.ndarray]:
    return {f"past_{kind}_{i}": out[f"present_{kind}_{i}"] for i in range(cfg.num_layers) for kind in ("key", "value")}


# Structure -------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_model_is_valid_opset18_ir10(name: str) -> None:
    m = model(name)
    onnx.checker.check_model(m, full_check=True)
    assert m.ir_version == 10
    assert [(o.domain, o.version) for o in m.opset_import] == [("", 18)]


def test_io_names_and_symbolic_dims() -> None:
    def io(m: onnx.ModelProto) -> tuple[list[str], list[str]]:
        return [v.name for v in m.graph.input], [v.name for v in m.graph.output]

    assert io(model("mlp")) == (["x"], ["y"])
    assert io(model("llama")) == (["input_ids"], ["logits"])
    assert io(model("bert")) == (["input_ids", "attention_mask", "token_type_ids"], ["last_hidden_state"])
    kv_in, kv_out = io(model("llama_kv"))
    assert kv_in == ["input_ids", "past_key_0", "past_value_0", "past_key_1", "past_value_1"]
    assert kv_out == ["logits", "present_key_0", "present_value_0", "present_key_1", "present_value_1"]
    logits = model("llama").graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in logits] == ["batch", "seq", 256]


@pytest.mark.parametrize("name", ["llama", "llama_untied", "llama_kv"])
def test_llama_uses_only_exporter_ops(name: str) -> None:
    assert set(op_histogram(model(name))) <= LLAMA_OPS


def test_generation_is_deterministic_per_seed() -> None:
    assert make_llama(seed=5).SerializeToString() == make_llama(seed=5).SerializeToString()
    assert make_bert(seed=5).SerializeToString() != make_bert(seed=6).SerializeToString()


def test_kv_and_plain_llama_share_weights() -> None:
    plain = {t.name: t.raw_data for t in model("llama").graph.initializer}
    assert plain == {t.name: t.raw_data for t in model("llama_kv").graph.initializer}


# Numerics against numpy ------------------------------------------------------


@pytest.mark.parametrize("batch", BATCHES)
def test_mlp_matches_numpy(batch: int) -> None:
    x = np.random.default_rng(batch).standard_normal((batch, 64)).astype(np.float32)
    assert_close(run("mlp", x=x)["y"], ref_mlp(weights("mlp"), x, n_hidden=2))


@pytest.mark.parametrize("seq", SEQS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("name", "cfg"), [("llama", LlamaConfig()), ("llama_untied", UNTIED)])
def test_llama_matches_numpy(name: str, cfg: LlamaConfig, batch: int, seq: int) -> None:
    ids = token_ids(batch, seq, cfg.vocab_size, seed=seq)
    assert_close(run(name, input_ids=ids)["logits"], ref_llama(weights(name), cfg, ids)[0])


def test_llama_logits_are_order_one() -> None:
    logits = run("llama", input_ids=token_ids(2, 7, 256))["logits"]
    assert 0.3 < logits.std() < 3.0


@pytest.mark.parametrize("past_len", [0, 4])
@pytest.mark.parametrize("seq", SEQS)
@pytest.mark.parametrize("batch", BATCHES)
def test_llama_kv_matches_numpy(batch: int, seq: int, past_len: int) -> None:
    cfg, rng = LlamaConfig(), np.random.default_rng(seq)
    shape = (batch, cfg.num_kv_heads, past_len, cfg.head_dim)
    past_feeds = {name: rng.standard_normal(shape).astype(np.float32) for name in empty_past(cfg, batch)}
    past = [(past_feeds[f"past_key_{i}"], past_feeds[f"past_value_{i}"]) for i in range(cfg.num_layers)]
    ids = token_ids(batch, seq, cfg.vocab_size, seed=seq)
    out = run("llama_kv", input_ids=ids, **past_feeds)
    logits, presents = ref_llama(weights("llama_kv"), cfg, ids, past)
    assert_close(out["logits"], logits)
    for i, (k, v) in enumerate(presents):
        assert_close(out[f"present_key_{i}"], k)
        assert_close(out[f"present_value_{i}"], v)


@pytest.mark.parametrize("seq", SEQS)
@pytest.mark.parametrize("batch", BATCHES)
def test_bert_matches_numpy(batch: int, seq: int) -> None:
    cfg, rng = BertConfig(), np.random.default_rng(seq)
    ids = token_ids(batch, seq, cfg.vocab_size, seed=seq)
    mask = (rng.random((batch, seq)) < 0.7).astype(np.int64)
    mask[:, 0] = 1  # a fully padded row has no meaningful output
    types = rng.integers(0, cfg.type_vocab_size, (batch, seq), dtype=np.int64)
    out = run("bert", input_ids=ids, attention_mask=mask, token_type_ids=types)["last_hidden_state"]
    assert_close(out, ref_bert(weights("bert"), cfg, ids, mask, types))


# Behaviour -------------------------------------------------------------------


def test_kv_cache_prefix_then_rest_equals_full_sequence() -> None:
    cfg, batch = LlamaConfig(), 2
    ids = token_ids(batch, 7, cfg.vocab_size, seed=11)
    full = run("llama", input_ids=ids)["logits"]

    first = run("llama_kv", input_ids=ids[:, :3], **empty_past(cfg, batch))
    rest = run("llama_kv", input_ids=ids[:, 3:], **presents_as_past(first, cfg))
    assert_close(first["logits"], full[:, :3])
    assert_close(rest["logits"], full[:, 3:])
    assert rest["present_key_0"].shape == (batch, cfg.num_kv_heads, 7, cfg.head_dim)

    step = first  # one token at a time, as in generation
    for t in range(3, 7):
        step = run("llama_kv", input_ids=ids[:, t : t + 1], **presents_as_past(step, cfg))
        assert_close(step["logits"][:, 0], full[:, t])


def test_llama_is_causal() -> None:
    ids = token_ids(2, 7, 256, seed=4)
    changed = ids.copy()
    changed[:, 4] = (changed[:, 4] + 1) % 256
    a, b = run("llama", input_ids=ids)["logits"], run("llama", input_ids=changed)["logits"]
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=0, atol=1e-6)
    assert (np.abs(a[:, 4:] - b[:, 4:]).max(axis=-1) > 1e-3).all()  # later positions do see the change


def test_bert_ignores_masked_positions() -> None:
    cfg = BertConfig()
    ids = token_ids(2, 7, cfg.vocab_size, seed=8)
    types = np.zeros_like(ids)
    mask = np.ones_like(ids)
    mask[:, 5:] = 0
    scrambled_ids, scrambled_types = ids.copy(), types.copy()
    scrambled_ids[:, 5:] = (ids[:, 5:] + 17) % cfg.vocab_size
    scrambled_types[:, 5:] = 1

    def hidden(i: np.ndarray, m: np.ndarray, t: np.ndarray) -> np.ndarray:
        return run("bert", input_ids=i, attention_mask=m, token_type_ids=t)["last_hidden_state"]

    padded = hidden(ids, mask, types)
    scrambled = hidden(scrambled_ids, mask, scrambled_types)
    np.testing.assert_allclose(scrambled[:, :5], padded[:, :5], rtol=0, atol=1e-6)
    # Padding is equivalent to not having those tokens at all.
    assert_close(hidden(ids[:, :5], mask[:, :5], types[:, :5]), padded[:, :5])


# Optional torch path ---------------------------------------------------------

TORCH_DEPS = ("torch", "transformers", "onnxscript")
HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in TORCH_DEPS)


def test_torch_export_explains_missing_dependencies(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)   # makes `import torch` fail as if absent
    with pytest.raises(RuntimeError, match=r"pip install torch==2\.13\.0 transformers"):
        export_llama_torch(LlamaConfig(), tmp_path / "llama.onnx")


@pytest.mark.torch
@pytest.mark.skipif(not HAVE_TORCH, reason="needs torch, transformers, onnxscript")
def test_torch_export_matches_zoo_llama(tmp_path) -> None:
    path = export_llama_torch(LlamaConfig(), tmp_path / "llama.onnx", seed=0)
    exported = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for seq in SEQS:
        ids = token_ids(2, seq, 256, seed=seq)
        assert_close(exported.run(None, {"input_ids": ids})[0], run("llama", input_ids=ids)["logits"])
