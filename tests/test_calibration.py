"""Calibration statistics, GPTQ through the pipeline, sensitivity and --precision auto, perplexity
and the per-layer comparison, on the generated decoders (numbers against the interpreter,
onnxruntime and the built library)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from qcompile.api import load
from qcompile.calibration import CalibrationError, collect, lm_feeds, load_samples, read_tokens
from qcompile.errors import QCompileError
from qcompile.evaluate import compare_arrays, compare_layers, perplexity, token_nll
from qcompile.ir import interpret
from qcompile.prepare import QuantOptions, prepare
from qcompile.sensitivity import choose, measure, relative_error, storage_bits
from qcompile.zoo.llama import LlamaConfig, make_llama
from qcompile.zoo.mlp import make_mlp

from .helpers import ort_run

CFG = LlamaConfig()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    d = tmp_path_factory.mktemp("calib")
    path = d / "llama.onnx"
    onnx.save(make_llama(CFG, with_kv_cache=True), path)
    ids = np.random.default_rng(0).integers(0, CFG.vocab_size, 256)
    np.save(d / "ids.npy", ids)
    return path, d / "ids.npy", ids


def _nsr(graph, ref, feeds):
    return relative_error(ref, interpret.run(graph, feeds), ["logits"])


def test_hessian_is_the_inputs_second_moment_and_shared(llama):
    path, ids_path, ids = llama
    g = prepare(load(path), QuantOptions()).graph
    samples = load_samples(ids_path, g, seq_len=64, max_samples=2)
    assert [s["input_ids"].shape for s in samples] == [(1, 64), (1, 64)]
    cal = collect(g, samples)
    q = next(n for n in g.nodes if n.name.endswith("self_attn/MatMul"))
    k = next(n for n in g.nodes if n.name.endswith("self_attn/MatMul_1"))
    assert cal[q.name] is cal[k.name]                  # q and k read one value: one set of statistics
    xs = [interpret.run(g, s, keep_all=True)[q.inputs[0]].reshape(-1, CFG.hidden_size) for s in samples]
    x = np.concatenate(xs).astype(np.float64)
    np.testing.assert_allclose(cal[q.name].hessian, x.T @ x, rtol=1e-9)
    np.testing.assert_array_equal(cal[q.name].absmax, np.abs(x).max(axis=0).astype(np.float32))
    assert cal[q.name].rows == 128 and cal.samples == 2
    top = float(np.abs(x).max())
    assert 0 < cal[q.name].clip_range("percentile", 99.0) <= cal[q.name].clip_range("percentile", 100.0) <= top
    assert 0 < cal[q.name].clip_range("mse") <= top
    assert cal[q.name].static_range("max") == pytest.approx(top, rel=1e-6)       # the true max, not a sample's
    assert cal[q.name].static_range("percentile") == cal[q.name].clip_range("percentile", 99.99)


def test_calibration_files_and_their_errors(llama, tmp_path):
    path, _, ids = llama
    g = prepare(load(path), QuantOptions()).graph
    (tmp_path / "ids.txt").write_text(", ".join(map(str, ids[:10])))
    np.testing.assert_array_equal(read_tokens(tmp_path / "ids.txt"), ids[:10])
    np.savez(tmp_path / "s.npz", input_ids=ids[:48].reshape(3, 1, 16))     # 3 samples, caches filled in
    samples = load_samples(tmp_path / "s.npz", g)
    assert len(samples) == 3 and samples[2]["past_key_0"].shape == (1, CFG.num_kv_heads, 0, CFG.head_dim)
    np.savez(tmp_path / "bad.npz", tokens=ids[:4])
    with pytest.raises(CalibrationError, match="not graph inputs"):
        load_samples(tmp_path / "bad.npz", g)
    with pytest.raises(CalibrationError, match="does not exist"):
        load_samples(tmp_path / "missing.npy", g)
    with pytest.raises(QCompileError, match="needs calibration data"):
        prepare(load(path), QuantOptions(precision="int4", rounding="gptq"))
    with pytest.raises(QCompileError, match="need calibration data"):
        prepare(load(path), QuantOptions(precision="int8", activations="int8-static"))
    with pytest.raises(QCompileError, match="--budget"):
        prepare(load(path), QuantOptions(precision="auto", calibrate=tmp_path / "ids.txt"))


def test_gptq_lowers_the_error_it_minimizes(llama):
    """GPTQ minimizes each layer's output error on the calibration activations: lower for every
    layer than round-to-nearest, and so the model's error on those tokens. (On held-out text of
    this random-weight model the inputs are nearly uncorrelated and the gain is small; the
    SmolLM2 perplexities in docs/accuracy.md are the held-out evidence.)"""
    import re
    path, ids_path, ids = llama
    ref_graph = prepare(load(path), QuantOptions()).graph
    feeds = lm_feeds(ref_graph, ids[:64])                     # the first calibration window
    ref = interpret.run(ref_graph, feeds)
    for rotate in (False, True):
        rtn = prepare(load(path), QuantOptions(precision="int4", rotate=rotate))
        gptq = prepare(load(path), QuantOptions(precision="int4", rotate=rotate, rounding="gptq",
                                                calibrate=ids_path, calib_seq=64, calib_samples=4))
        errors = [tuple(map(float, re.search(r"output error (\S+) \(rtn (\S+)\)", note).groups()))
                  for note in gptq.notes]
        assert len(errors) == 2 * 7 + 1 and all(g < r for g, r in errors), errors
        e_rtn, e_gptq = _nsr(rtn.graph, ref, feeds), _nsr(gptq.graph, ref, feeds)
        assert e_gptq < 0.8 * e_rtn, (rotate, e_rtn, e_gptq)


def test_sensitivity_is_the_error_of_one_quantized_layer(llama):
    path, ids_path, ids = llama
    g = prepare(load(path), QuantOptions()).graph
    feeds = lm_feeds(g, ids[:32])
    name = next(n.name for n in g.nodes if n.name.endswith("mlp/MatMul_2"))
    # a whole-graph run with only that layer quantized (its int4 search weighed by self-calibration)
    one = prepare(load(path), QuantOptions(precision="fp32", formats={name: "int4-g128"}))
    assert one.self_calibration is not None
    sens = measure(g, feeds, ("int4-g128", "int8"), calibration=one.calibration)
    assert set(sens[name]) == {"int4-g128", "int8"} and sens[name]["int8"] < sens[name]["int4-g128"]
    assert _nsr(one.graph, interpret.run(g, feeds), feeds) == pytest.approx(sens[name]["int4-g128"], rel=1e-6)


def test_choose_spends_bits_where_they_buy_the_most_error():
    from qcompile.ir.graph import Graph
    g = Graph("t")
    x = g.add_input("x", *_fp32((1, 8))).name
    for name in ("a", "b"):              # two equal-size layers: choose reads only their weight sizes
        w = g.add_const(f"w{name}", np.ones((8, 8), np.float32)).name
        g.add_node("MatMul", [x, w], [g.add_value(f"y{name}", *_fp32((1, 8))).name], name=name)
    g.outputs = ["ya", "yb"]
    sens = {"a": {"ternary": 0.5, "int4-g128": 0.1, "int8": 0.01}, "b": {"ternary": 0.02, "int4-g128": 0.01,
                                                                         "int8": 0.001}}
    assert choose(g, sens, 1.0) == {"a": "ternary", "b": "ternary"}
    assert choose(g, sens, 0.2) == {"a": "int4-g128", "b": "ternary"}
    assert choose(g, sens, 0.02) == {"a": "int8", "b": "int4-g128"}
    with pytest.raises(QCompileError, match="budget"):
        choose(g, sens, 1e-4)
    assert storage_bits("int4-g128") == 4.25 and storage_bits("ternary") == 2


def _fp32(shape):
    from qcompile.ir import dtypes
    return dtypes.FP32, shape


def test_auto_meets_its_budget_with_fewer_bits_than_int8(llama):
    path, ids_path, ids = llama
    ref_graph = prepare(load(path), QuantOptions()).graph
    budget = 0.01
    auto = prepare(load(path), QuantOptions(precision="auto", budget=budget, calibrate=ids_path, calib_seq=64,
                                            calib_samples=2))
    chosen = {name: fmt for name, role, fmt, _ in auto.layers if role != "embedding"}
    assert {"int8", "int4-g64"} <= set(chosen.values()) or len(set(chosen.values())) > 1
    bits = sum(storage_bits(f) * auto.params[n] for n, f in chosen.items()) / sum(auto.params[n] for n in chosen)
    assert bits < 8
    feeds = lm_feeds(ref_graph, ids[:64])                    # the sample sensitivity was measured on
    assert _nsr(auto.graph, interpret.run(ref_graph, feeds), feeds) < 2 * budget


def test_perplexity_matches_onnxruntime(llama):
    path, _, ids = llama
    ids = ids[:100]
    g = prepare(load(path), QuantOptions()).graph
    ppl, n = perplexity(g, ids, window=40)
    nll = []
    for s in range(0, 99, 40):
        chunk = ids[s:s + 40]
        feeds = {k: v for k, v in lm_feeds(g, chunk).items()}
        logits = ort_run(path, feeds)["logits"][0]
        nll.append(token_nll(logits[:-1], chunk[1:]))
    assert n == 97
    assert ppl == pytest.approx(float(np.exp(np.concatenate(nll).mean())), rel=1e-5)


def test_compare_layers_metrics():
    assert compare_arrays(np.ones(4), np.ones(4)) == (np.inf, 1.0, 0.0)
    snr, cos, err = compare_arrays(np.array([3.0, 4.0]), np.array([3.0, 3.0]))
    assert snr == pytest.approx(10 * np.log10(25.0)) and err == 1.0 and cos == pytest.approx(21 / (5 * 18 ** 0.5))
    model = make_mlp()
    import tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "mlp.onnx"
        onnx.save(model, p)
        ref = prepare(load(p), QuantOptions()).graph
        q = prepare(load(p), QuantOptions(precision="int8"))
        x = np.random.default_rng(1).standard_normal((2, ref.values[ref.inputs[0]].shape[1])).astype(np.float32)
        formats = {n: f for n, _, f, _ in q.layers}
        rows = compare_layers(ref, q.graph, {ref.inputs[0]: x}, formats)
        assert [r.name for r in rows[:-1]] == [n for n in formats if n in {r.name for r in rows}]
        assert all(25 < r.snr_db < 80 and r.cosine > 0.99 for r in rows)


@pytest.mark.parametrize("extra", [["--rounding", "gptq"], ["--activations", "static", "--act-clip", "mse"]],
                         ids=["gptq", "static"])
def test_cli_compare_replays_a_calibrated_build(llama, tmp_path, capsys, extra):
    from qcompile.cli import main
    path, ids_path, _ = llama
    out = tmp_path / "out"
    assert main(["build", str(path), "--precision", "int4", "--rotate", "--calibrate", str(ids_path), *extra,
                 "--calib-seq", "64", "--max-seq-len", "128", "-o", str(out)]) == 0
    manifest = json.loads((out / "llama.manifest.json").read_text())
    assert manifest["precision"]["calibration"]["seq"] == 64
    static = "static" in extra
    assert manifest["precision"]["activations"] == ("int8-static" if static else "int8")
    assert all(("static" in r["activations"]) == static for r in manifest["quantized_layers"])
    capsys.readouterr()
    assert main(["inspect", str(path), "--compare", str(out / "llama.so"), "--data", str(ids_path)]) == 0
    text = capsys.readouterr().out
    assert f"rounding {'rtn' if static else 'gptq'}" in text and "lm_head/MatMul" in text
    # the library computes what the replayed reference computes: its quantization is the one measured.
    # End to end that holds to float rounding unless an activation on this data lies within a float
    # rounding of an int8 half step (the library's last bit then rounds it the other way, and the
    # logits move by ~1e-2): there the judge is kernel by kernel, as `qcompile verify` judges.
    import qcompile
    from qcompile.api import replay
    from qcompile.selftest import check_steps, conditioning
    lib = qcompile.load(out / "llama.so")
    errors = [float(line.rsplit("max error", 1)[1]) for line in
              text.split("outputs of the library:")[1].strip().splitlines()]
    if max(errors) >= 1e-4:
        graph = replay(out / "llama.so")[0]
        feeds = lm_feeds(graph, np.load(ids_path)[:64])
        outputs, records = lib.trace(**feeds)
        assert conditioning(graph, feeds, interpret.run(graph, feeds)) > 1e-4
        report = check_steps(graph, feeds, records, 1e-5)
        assert report.ok, report.render()
    # and both score the same perplexity
    opts = dict(activations="int8-static", act_clip="mse") if static else dict(rounding="gptq")
    ref = prepare(load(path), QuantOptions(precision="int4", rotate=True, calibrate=ids_path, calib_seq=64,
                                           **opts)).graph
    ids = np.load(ids_path)[:128]
    assert perplexity(ref, ids, 64, run=lambda feeds: lib(**feeds))[0] == pytest.approx(perplexity(ref, ids, 64)[0],
                                                                                       rel=1e-3)


def test_sensitivity_of_a_gemm_layer_keeps_alpha_and_bias():
    """A Gemm's trial output is alpha * x Wq + beta * C, so a near-lossless format scores near 0."""
    from qcompile.ir import dtypes
    from qcompile.ir.graph import Graph
    rng = np.random.default_rng(0)
    g = Graph("gemm")
    g.add_input("x", dtypes.FP32, (4, 32))
    w = g.add_const("w", rng.standard_normal((16, 32)).astype(np.float32)).name
    c = g.add_const("c", rng.standard_normal((16,)).astype(np.float32)).name
    g.add_node("Gemm", ["x", w, c], [g.add_value("y", dtypes.FP32, (4, 16)).name],
               {"transB": 1, "alpha": 0.5, "beta": 2.0}, name="fc")
    g.outputs = ["y"]
    sens = measure(g, {"x": rng.standard_normal((4, 32)).astype(np.float32)}, ("bf16", "int8", "int4-g32"))
    assert sens["fc"]["bf16"] < 1e-5 and sens["fc"]["int8"] < 1e-3 < sens["fc"]["int4-g32"] < 0.05
