"""Metal artifacts checked numerically without a Mac: for the MLP, the Llama-style decoder and the
BERT-style encoder at fp32, fp16, int8, int4 and ternary, `qcompile build --target metal` writes
the sources folder; every generated MSL kernel type-checks against the stand-in <metal_stdlib>;
the unchanged MSL, launchers and executor linked on the CPU (qcompile.testing.metal_cpu) match
onnxruntime (fp32) or the reference interpreter running the same quantized graph; the decoder's
session keeps its KV cache in Metal buffers and matches onnxruntime over a prompt and two steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompile.artifact.loader import load
from qcompile.build import BuildOptions, build
from qcompile.testing.metal_cpu import link_on_cpu, typecheck
from qcompile.zoo import LlamaConfig, make_bert, make_llama, make_mlp

from .helpers import gpu_check_feeds, quantized_graph

pytestmark = pytest.mark.skipif(shutil.which("clang++") is None or shutil.which("g++") is None,
                                reason="the MSL type check needs clang++; running it on the CPU needs g++")

MODELS = {"mlp": make_mlp, "llama": lambda: make_llama(LlamaConfig(), with_kv_cache=True), "bert": make_bert}
PRECISIONS = ["fp32", "fp16", "int8", "int4", "ternary"]


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metal_models")
    for name, make in MODELS.items():
        onnx.save(make(), str(tmp / f"{name}.onnx"))
    return tmp


def _built(path: Path, name: str, precision: str, tmp: Path):
    result = build(path, BuildOptions(target="metal", precision=precision, group_size=32, max_seq_len=64,
                                      out_dir=tmp / "out"))
    folder = tmp / "out" / f"{name}_metal"
    typecheck(folder / "kernels.metal")            # every kernel, as Apple's compiler would see it
    return result, load(link_on_cpu(folder, name, tmp / "cpu" / f"{name}.so"))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_metal_kernels_type_check_and_match_on_the_cpu(name, precision, onnx_files, tmp_path):
    path = onnx_files / f"{name}.onnx"
    result, artifact = _built(path, name, precision, tmp_path)
    manifest = json.loads(result.manifest.read_text())
    if precision in ("int8", "int4", "ternary"):     # every quantized layer gets its own schedule (2-bit fields too)
        ops = {k["op"]: set() for k in manifest["kernels"]}
        for k in manifest["kernels"]:
            ops[k["op"]].add(k["schedule"])
        assert ops["qcompile.QLinearTIR"] == {"qlinear-warp-per-column"}
        assert ops["qcompile.QuantizeRowsTIR"] == {"quantize-rows-block"}
    if precision == "fp32":
        sess = ort.InferenceSession(str(path))
        reference = lambda feed: dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feed)))  # noqa: E731
    else:
        from qcompile.ir.interpret import run
        graph = quantized_graph(path, precision, group_size=32)
        reference = lambda feed: run(graph, feed)  # noqa: E731
    model = onnx.load(str(path))
    for feed in gpu_check_feeds(name, model, np.random.default_rng(5)):
        got = artifact(**feed)
        for out, want in reference(feed).items():
            assert got[out].shape == want.shape, out
            # float32 sums against the reference's float64 ones: a rare int8 rounding step downstream
            tol = 1e-4 if precision == "fp32" else 1e-3
            assert np.abs(got[out] - want).max() <= tol * max(np.abs(want).max(), 1.0), (name, precision, out)


def test_a_metal_decoder_session_matches_onnxruntime_on_the_cpu(onnx_files, tmp_path):
    """Prefill 7 tokens, decode 2, against the whole sequence in onnxruntime."""
    path = onnx_files / "llama.onnx"
    _, artifact = _built(path, "llama", "fp32", tmp_path)
    ids = np.random.default_rng(1).integers(0, artifact.vocab_size, 9)
    session = artifact.session()
    got = np.stack([session.prefill(ids[:7]), session.decode(ids[7]), session.decode(ids[8])])
    model = onnx.load(str(path))
    kv = [i for i in model.graph.input if i.name.startswith("past_")]        # (batch, heads, past, head_dim)
    heads, head_dim = (kv[0].type.tensor_type.shape.dim[d].dim_value for d in (1, 3))
    feed = {i.name: np.zeros((1, heads, 0, head_dim), np.float32) for i in kv}
    want = ort.InferenceSession(str(path)).run(["logits"], {"input_ids": ids[None], **feed})[0][0, 6:]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
