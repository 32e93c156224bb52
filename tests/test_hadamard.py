"""Hadamard matrices for rotations (issue 7): H Hᵀ = n I for every construction, the layer sizes of
real models factor into a known order times a power of two, and unknown orders fail by name."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.quant.hadamard import NoHadamardError, factor, fwht, hadamard, orthogonal, sylvester

from .helpers import llama_feeds


def assert_hadamard(h: np.ndarray) -> None:
    n = h.shape[0]
    assert h.shape == (n, n) and set(np.unique(h)) <= {-1, 1}
    np.testing.assert_array_equal(h.astype(np.int64) @ h.T.astype(np.int64), n * np.eye(n, dtype=np.int64))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256])
def test_sylvester(n):
    assert_hadamard(sylvester(n))


# Paley I from primes (12, 20, 44, 60, 84) and prime powers (28 = 3^3+1, 344 = 7^3+1); Paley II
# (36 from 17, 52 from 25 = 5^2, 76 from 37)
@pytest.mark.parametrize("n", [12, 20, 28, 36, 44, 52, 60, 76, 84, 344])
def test_paley_orders(n):
    assert factor(n) == (n, 1)
    assert_hadamard(hadamard(n))


@pytest.mark.parametrize("n, m", [(576, 36), (1536, 12), (5632, 44), (11008, 344), (4096, 1), (2048 * 3, 12)])
def test_model_sizes_factor(rng, n, m):
    """SmolLM2 (576, 1536), TinyLlama (5632), Llama-2-7B (11008)."""
    assert factor(n) == (m, n // m)
    h = hadamard(n)
    if n <= 1536:
        assert_hadamard(h)
    else:      # n^3 is too slow to multiply out: orthogonality shows on random vectors instead
        x = rng.standard_normal((3, n))
        np.testing.assert_allclose(np.linalg.norm(x @ orthogonal(n), axis=1), np.linalg.norm(x, axis=1), rtol=1e-9)
        assert set(np.unique(h[:64, :64])) <= {-1, 1}


@pytest.mark.parametrize("n", [0, 7, 6, 92, 4 * 47])
def test_unknown_orders_fail_by_name(n):
    with pytest.raises(NoHadamardError, match=str(n)):
        hadamard(n)


def test_fwht_is_the_sylvester_product(rng):
    x = rng.standard_normal((5, 3, 128)).astype(np.float32)
    np.testing.assert_allclose(fwht(x), x @ sylvester(128).astype(np.float32), rtol=1e-5, atol=1e-4)
    with pytest.raises(NoHadamardError):
        fwht(np.zeros(12))


def test_orthogonal_rotation_is_exact_in_float(rng):
    """Rotating a linear layer's input and weights by the same orthogonal H leaves it unchanged."""
    x, w = rng.standard_normal((4, 576)), rng.standard_normal((576, 32))
    q = orthogonal(576)
    np.testing.assert_allclose((x @ q) @ (q.T @ w), x @ w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kv", [False, True])
def test_rotated_llama_computes_the_same_function(rng, kv):
    """fold_norms then rotate: embedding, q/k/v, o, gate/up, down and LM head weights all change,
    outputs stay equal to float rounding (exact in real arithmetic)."""
    from qcompile.frontend import from_proto
    from qcompile.ir.interpret import run
    from qcompile.passes import get_pass, run_pipeline
    from qcompile.zoo import LlamaConfig, make_llama

    cfg = LlamaConfig(hidden_size=96, intermediate_size=128, num_heads=3, num_kv_heads=1)    # 96 = 12 x 8
    graph, _ = run_pipeline(from_proto(make_llama(cfg, with_kv_cache=kv)))
    rotated = get_pass("rotate").fn(get_pass("fold_norms").fn(graph.copy()))
    changed = [n for n in graph.values if graph.values[n].const is not None and graph.values[n].const.ndim == 2
               and n in rotated.values and not np.allclose(graph.values[n].const, rotated.values[n].const)]
    assert len(changed) >= 7 * cfg.num_layers, changed
    online = [n for n in rotated.nodes if n.op_id == "qcompile.Hadamard"]
    assert len(online) == cfg.num_layers and all("mlp" in n.name for n in online)     # before each down_proj
    feeds = llama_feeds(rng, cfg, seq=6, past=3 if kv else None)
    want, got = run(graph, feeds), run(rotated, feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4 * np.abs(want[name]).max())


def test_rotate_needs_scale_free_norms():
    from qcompile.frontend import from_proto
    from qcompile.passes import get_pass, run_pipeline
    from qcompile.passes.rotate import RotateError
    from qcompile.zoo import LlamaConfig, make_llama

    graph, _ = run_pipeline(from_proto(make_llama(LlamaConfig())))
    with pytest.raises(RotateError, match="gamma") as info:
        get_pass("rotate").fn(graph)
    assert info.value.node and "fold_norms" in info.value.hint


def test_build_with_rotate_computes_the_same_function(tmp_path, rng):
    """qcompile build --rotate: a rotated fp32 library equals onnxruntime on the original file."""
    import onnx

    import qcompile
    from qcompile.cli import main
    from qcompile.zoo import LlamaConfig, make_llama

    from .helpers import ort_run

    cfg = LlamaConfig(hidden_size=96, intermediate_size=128, num_heads=3, num_kv_heads=1)
    path = tmp_path / "llama.onnx"
    onnx.save(make_llama(cfg), str(path))
    assert main(["build", str(path), "--rotate", "--max-seq-len", "8", "-o", str(tmp_path / "out")]) == 0
    ids = rng.integers(0, cfg.vocab_size, (1, 7)).astype(np.int64)
    got = qcompile.load(tmp_path / "out" / "llama.so")(input_ids=ids)["logits"]
    want = ort_run(path, {"input_ids": ids})["logits"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("n", [64, 96, 1536])
def test_online_hadamard_kernel(rng, n):
    """qcompile.Hadamard (FWHT stages + the small known factor): the reference and the TIR kernel
    both equal x @ H / sqrt(n)."""
    from onnx import TensorProto, helper

    from qcompile.frontend import from_proto
    from qcompile.ir.interpret import run
    from qcompile.passes import run_pipeline
    from qcompile.quant.hadamard import kron_factors
    from qcompile.targets.plan import make_plan
    from qcompile.targets.tvm.jit import run_plan

    from .test_lowering import compile_plan

    small, _ = kron_factors(n)
    mix = (small / np.sqrt(n)).astype(np.float32)
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Hadamard", ["x", "mix"], ["y"], domain="qcompile")], "h",
        [helper.make_tensor_value_info("x", f, ["s", n])], [helper.make_tensor_value_info("y", f, ["s", n])],
        [helper.make_tensor("mix", f, list(mix.shape), mix.reshape(-1).tolist())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("qcompile", 1)])
    g, _ = run_pipeline(from_proto(model))
    plan = make_plan(g, {"s": 4})
    _, module = compile_plan(plan, "h")
    x = rng.standard_normal((3, n)).astype(np.float32)
    want = x @ orthogonal(n)
    np.testing.assert_allclose(run(g, {"x": x})["y"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(run_plan(plan, module, {"x": x})["y"], want, rtol=1e-4, atol=1e-4)
