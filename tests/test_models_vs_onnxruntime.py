"""The reference interpreter matches onnxruntime on whole generated models.

One model file per architecture, run at several batch and sequence lengths (symbolic dims),
before and after the default pass pipeline. Error bound: max abs error <= 1e-4 x output scale.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from qcompile import api
from qcompile.frontend import from_proto
from qcompile.ir.interpret import run
from qcompile.zoo import BertConfig, LlamaConfig, make_bert, make_llama, make_mlp


def ort_session(model):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def assert_close(ours: dict, theirs: dict):
    for name, expected in theirs.items():
        actual = ours[name]
        assert actual.shape == expected.shape, name
        assert actual.dtype == expected.dtype, name
        scale = max(1.0, float(np.max(np.abs(expected))))
        err = float(np.max(np.abs(actual.astype(np.float64) - expected)))
        assert err <= 1e-4 * scale, f"{name}: max abs error {err:.3g} for output scale {scale:.3g}"


def check_model(model, feeds_list):
    graph = from_proto(model)
    optimized, _ = api.optimize(graph, verify_each=True)
    sess = ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    for feeds in feeds_list:
        theirs = dict(zip(names, sess.run(None, feeds)))
        assert_close(run(graph, feeds), theirs)
        assert_close(run(optimized, feeds), theirs)


def test_mlp(rng):
    model = make_mlp()
    check_model(model, [{"x": rng.standard_normal((b, 64)).astype(np.float32)} for b in (1, 3, 8)])


@pytest.mark.parametrize("tied", [True, False])
def test_llama_several_sequence_lengths(rng, tied):
    cfg = LlamaConfig(tie_embeddings=tied)
    feeds = [{"input_ids": rng.integers(0, cfg.vocab_size, (b, s)).astype(np.int64)}
             for b, s in ((1, 1), (1, 7), (2, 5), (1, 33))]
    check_model(make_llama(cfg), feeds)


def test_llama_with_kv_cache(rng):
    cfg = LlamaConfig()
    model = make_llama(cfg, with_kv_cache=True)
    feeds_list = []
    for past, seq in ((0, 4), (3, 1), (6, 2)):
        feeds = {"input_ids": rng.integers(0, cfg.vocab_size, (1, seq)).astype(np.int64)}
        for i in range(cfg.num_layers):
            for kind in ("key", "value"):
                feeds[f"past_{kind}_{i}"] = rng.standard_normal((1, cfg.num_kv_heads, past, cfg.hidden_size //
                                                                 cfg.num_heads)).astype(np.float32)
        feeds_list.append(feeds)
    check_model(model, feeds_list)


def test_bert_with_padding(rng):
    cfg = BertConfig()
    feeds_list = []
    for b, s in ((1, 4), (2, 9)):
        mask = np.ones((b, s), np.int64)
        mask[-1, s // 2:] = 0
        feeds_list.append({"input_ids": rng.integers(0, cfg.vocab_size, (b, s)).astype(np.int64),
                           "attention_mask": mask,
                           "token_type_ids": rng.integers(0, 2, (b, s)).astype(np.int64)})
    check_model(make_bert(cfg), feeds_list)


def test_outputs_are_not_degenerate(rng):
    """Guard the comparisons above: the logits vary across tokens and positions."""
    graph = from_proto(make_llama(LlamaConfig()))
    logits = run(graph, {"input_ids": rng.integers(0, 256, (1, 6)).astype(np.int64)})["logits"]
    assert logits.std() > 0.1
    assert np.abs(logits[0, 0] - logits[0, -1]).max() > 0.1


def _have_torch() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) for m in ("torch", "transformers", "onnxscript"))


@pytest.mark.torch
@pytest.mark.skipif(not _have_torch(), reason="needs the torch extra: pip install -e '.[torch]'")
def test_torch_exported_llama(rng, tmp_path):
    """A transformers LlamaForCausalLM exported by torch.onnx (dynamo) runs through qcompile."""
    import onnx

    from qcompile.zoo.torch_export import export_llama_torch
    path = export_llama_torch(LlamaConfig(), tmp_path / "llama_torch.onnx")
    model = onnx.load(str(path))
    feeds = [{model.graph.input[0].name: rng.integers(0, 256, (b, s)).astype(np.int64)}
             for b, s in ((1, 1), (2, 6), (1, 17))]
    check_model(model, feeds)
