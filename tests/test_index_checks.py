"""Inputs that onnxruntime refuses are refused, not silently changed (issue 21): token ids outside
the embedding table, and dims that would take a learned position table's index past its end."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompile import load
from qcompile.artifact.loader import ArtifactError
from qcompile.build import BuildOptions, build
from qcompile.zoo import LlamaConfig, make_bert, make_llama


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama")
    onnx.save(make_llama(LlamaConfig()), str(tmp / "llama.onnx"))
    res = build(tmp / "llama.onnx", BuildOptions(out_dir=tmp, max_seq_len=16, target="x86_64-v3"))
    return tmp / "llama.onnx", load(res.library)


@pytest.mark.parametrize("bad", [256, 5000, -257, 2**40])
def test_a_token_outside_the_vocabulary_is_refused_as_onnxruntime_does(llama, bad):
    path, model = llama
    ids = np.array([[1, bad, 3]], np.int64)
    with pytest.raises(Exception):
        ort.InferenceSession(str(path)).run(None, {"input_ids": ids})
    with pytest.raises(ArtifactError) as err:
        model(input_ids=ids)
    assert err.value.status == 4
    assert (f"input 'input_ids' holds {bad} at element 1; it indexes 'model.embed_tokens.weight' (node "
            f"model/Gather_1), which has 256 rows (indices from -256 to 255)") in str(err.value)
    ok = np.array([[1, 255, -256]], np.int64)     # the edges, negative ones as ONNX allows, still run
    np.testing.assert_allclose(model(input_ids=ok)["logits"],
                               ort.InferenceSession(str(path)).run(None, {"input_ids": ok})[0], rtol=1e-4, atol=1e-4)


def test_a_sequence_past_a_learned_position_table_is_refused(tmp_path):
    """make_bert's position table has 64 rows, read at Range(0, seq): a library built for 128 tokens
    says at build time that seq may be at most 64 and refuses 65 at run time (it used to clamp)."""
    onnx.save(make_bert(), str(tmp_path / "bert.onnx"))
    notes = []
    res = build(tmp_path / "bert.onnx", BuildOptions(out_dir=tmp_path, max_seq_len=128, target="x86_64-v3"),
                progress=lambda phase, text: notes.append(text))
    what = ("it indexes 'embeddings.position_embeddings.weight' (node embeddings/Gather_3), which has 64 rows, so "
            "seq may be at most 64")
    assert any(what in n for n in notes), notes
    model = load(res.library)

    def feeds(n):
        return dict(input_ids=np.ones((1, n), np.int64), attention_mask=np.ones((1, n), np.int64),
                    token_type_ids=np.zeros((1, n), np.int64))
    want = ort.InferenceSession(str(tmp_path / "bert.onnx")).run(None, feeds(64))[0]
    np.testing.assert_allclose(model(**feeds(64))["last_hidden_state"], want, rtol=1e-4, atol=1e-4)
    with pytest.raises(Exception):
        ort.InferenceSession(str(tmp_path / "bert.onnx")).run(None, feeds(65))
    with pytest.raises(ArtifactError) as err:
        model(**feeds(65))
    assert err.value.status == 4 and str(err.value).endswith(f"seq is 65: {what}")
