"""Quantized builds end to end: `qcompile build --precision ...` produces a library whose numbers
match the reference interpreter running the same quantized graph (int8 activations per token)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import onnx
import pytest

import qcompile
from qcompile.artifact.loader import ArtifactError
from qcompile.build import BuildOptions, build
from qcompile.ir.interpret import run
from qcompile.targets.plan import LoweringError
from qcompile.targets.tvm.host import host_cpu_flags
from qcompile.zoo import LlamaConfig, make_llama, make_mlp

from .helpers import ort_run, quantized_graph

CFG = LlamaConfig(hidden_size=128, intermediate_size=256, vocab_size=512, num_layers=2)


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("qllama") / "llama.onnx"
    onnx.save(make_llama(CFG), str(path))
    return path


CASES = {
    "mixed-int4-g32": dict(precision="mixed", group_size=32),
    "mixed-ternary": dict(precision="mixed", middle="ternary"),
    "int8": dict(precision="int8"),
    "int4-g64-asym": dict(precision="int4", group_size=64, plan_text='"*/MatMul*" = "int4-g64-asym"\n'),
}


@pytest.mark.parametrize("case", list(CASES))
def test_quantized_llama_matches_the_interpreter(case, llama_path, tmp_path, rng):
    kw = dict(CASES[case])
    plan = None
    if "plan_text" in kw:
        plan = tmp_path / "plan.toml"
        plan.write_text(kw.pop("plan_text"))
    opts = BuildOptions(out_dir=tmp_path / case, max_seq_len=16, plan=plan, **kw)
    result = build(llama_path, opts)
    manifest = json.loads(result.manifest.read_text())
    layers = manifest["quantized_layers"]
    assert layers and all(layer["layout"] == "dot4-16x4" for layer in layers)
    assert {k["op"] for k in manifest["kernels"]} >= {"qcompile.QuantizeRows", "qcompile.QLinearPacked"}

    graph = quantized_graph(llama_path, kw.pop("precision"), plan, **kw)
    model = qcompile.load(result.library)
    for seq in (1, 7):
        ids = rng.integers(0, CFG.vocab_size, (1, seq)).astype(np.int64)
        got = model(input_ids=ids)["logits"]
        expected = run(graph, {"input_ids": ids})["logits"]
        fp32 = ort_run(llama_path, {"input_ids": ids})["logits"]
        scale = np.abs(expected).max()
        # Only float summation order differs, but that can move an activation across a rounding
        # boundary of the next layer's int8 quantization: a bounded, rare step.
        assert np.abs(got - expected).max() <= 1e-3 * scale, case
        err = np.linalg.norm(got - fp32) / np.linalg.norm(fp32)
        print(f"{case} seq={seq}: max|artifact-interpreter|/max = {np.abs(got - expected).max() / scale:.2e}, "
              f"relative error vs fp32 onnxruntime {err:.3f}")
        if case == "int8":
            assert err < 0.05


def test_odd_widths_and_several_rows(tmp_path, rng):
    """An MLP whose last layer has 10 outputs (not a multiple of 16) and a batch of rows."""
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(in_features=64, hidden=(96, 128), out_features=10), str(path))
    result = build(path, BuildOptions(out_dir=tmp_path / "out", precision="int8", dim_bounds={"batch": 9}))
    graph = quantized_graph(path, "int8")
    model = qcompile.load(result.library)
    for batch in (1, 4, 9):
        x = rng.standard_normal((batch, 64)).astype(np.float32)
        got, expected = model(x=x)["y"], run(graph, {"x": x})["y"]
        assert got.shape == (batch, 10)
        assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max()


def test_unpackable_layer_is_named_before_compiling(tmp_path):
    """K = 60 is not a whole number of 4-byte dot-product steps for int8: the error names the node."""
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(in_features=62, hidden=(64,), out_features=16), str(path))
    with pytest.raises(LoweringError, match="cannot pack") as info:
        build(path, BuildOptions(out_dir=tmp_path / "out", precision="int8"))
    assert info.value.node
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.so"))


def test_avx512_preset_builds_its_own_kernels(llama_path, tmp_path):
    """--target x86_64 compiles the AVX-512 VNNI micro-kernels and names the CPU features a
    library needs; on a CPU without them it is refused at load, never run."""
    result = build(llama_path, BuildOptions(out_dir=tmp_path / "avx512", target="x86_64", precision="mixed",
                                            group_size=32, max_seq_len=8))
    manifest = json.loads(result.manifest.read_text())
    assert "avx512_vnni" in manifest["target"]["cpu_features"]
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(result.library)], capture_output=True,
                                 text=True, check=True).stdout
    assert "vpdpbusd" in disassembly
    if "avx512_vnni" not in host_cpu_flags():
        with pytest.raises(ArtifactError, match="lacks") as info:
            qcompile.load(result.library)
        assert info.value.status == 7


def test_a_refused_micro_kernel_call_fails_the_run_loudly(tmp_path, monkeypatch, rng):
    """If a micro-kernel ever refuses its arguments, the run fails with a message naming it,
    instead of returning an output that was never written (monkeypatched: an unknown family)."""
    from qcompile.targets.tvm import extern_ops
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(in_features=64, hidden=(64,), out_features=16), str(path))
    monkeypatch.setitem(extern_ops.FAMILY_CODES, "int8", 99)
    from qcompile.selftest import VerifyError     # the build's self-test catches it first
    with pytest.raises(VerifyError, match="fails on its test vectors: .*qc_qlinear_panel refused its arguments"):
        build(path, BuildOptions(out_dir=tmp_path / "out", precision="int8", dim_bounds={"batch": 2}))
    result = build(path, BuildOptions(out_dir=tmp_path / "out", precision="int8", dim_bounds={"batch": 2},
                                      verify=False))
    with pytest.raises(ArtifactError, match="qc_qlinear_panel refused its arguments"):
        qcompile.load(result.library)(x=rng.standard_normal((1, 64)).astype(np.float32))
