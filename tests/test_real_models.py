"""Real models in the forms users have them: SmolLM2-135M's first layers, exported by
tools/export_model.py (torch.onnx.export, dynamo) and cached between test runs.

SmolLM2 has outlier channels (|x| about 230x the median) that the generated models never make.
Under int8 activation rounding they make its outputs ill-conditioned: a last-bit difference
between the library's float arithmetic and numpy's moves an activation across a rounding boundary
and, through the later layers, the logits by 1e-2. These builds failed their self-test (issue 21)
though every kernel was right; the self-test now judges such libraries kernel by kernel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qcompile.build import BuildOptions, build
from qcompile import selftest
from qcompile.selftest import read_meta

from .test_export_model import MISSING_SMOLLM2, TOOL, em, needs_smollm2

SLICE_LAYERS = 4    # enough for SmolLM2's outlier channels to make int8 rounding chaotic (layer 2 on)


@pytest.fixture(scope="session")
def smollm2_slice(request, tmp_path_factory) -> Path:
    """SmolLM2's first SLICE_LAYERS blocks with a KV cache, exported once and kept in pytest's
    cache (keyed by the exporter's source, so a changed exporter exports again)."""
    if MISSING_SMOLLM2:
        pytest.skip(f"needs {', '.join(MISSING_SMOLLM2)}: {em.SETUP_HINT}")
    import hashlib
    key = hashlib.sha256(TOOL.read_bytes()).hexdigest()[:12]
    cache = request.config.cache      # None under -p no:cacheprovider: then exported for this run only
    folder = Path(cache.mkdir("qcompile-real-models")) if cache else tmp_path_factory.mktemp("real-models")
    path = folder / f"smollm2_kv_l{SLICE_LAYERS}_{key}.onnx"
    if not path.exists():
        part = path.with_suffix(".part.onnx")
        subprocess.run([sys.executable, str(TOOL), "smollm2", "--kv-cache", "--layers", str(SLICE_LAYERS),
                        "-o", str(part)], check=True, capture_output=True, text=True)
        part.rename(path)
    return path


def _self_test(res) -> dict:
    return json.loads(res.manifest.read_text())["self_test"]


@needs_smollm2
@pytest.mark.parametrize("target", ["native", "x86_64-v3"])
def test_int8_build_passes_its_self_test_kernel_by_kernel(smollm2_slice, tmp_path, target):
    """The build issue 21 reported (int8, native): the self-test removed a correct library. On
    these vectors the reference's own outputs move past the tolerance when its int8 activations
    are perturbed by 1e-6, so the library is judged on every kernel's own inputs, and passes
    there with float-level errors."""
    res = build(smollm2_slice, BuildOptions(out_dir=tmp_path, precision="int8", max_seq_len=512, target=target))
    record = _self_test(res)
    assert record["verified"] and res.library.exists()
    assert record["conditioning"] > record["tolerance"]          # the case this test is about
    assert record["kernels"]["values"] > 90 and record["kernels"]["largest_error"] < 1e-5, record["kernels"]


@needs_smollm2
@pytest.mark.parametrize("target, precision, group", [("arm64", "int8", None), ("arm64-v8", "mixed", 32)])
def test_arm64_builds_verify_under_qemu(smollm2_slice, tmp_path, target, precision, group):
    """issue 21's qemu MISMATCH (int8 on arm64 misses by 1.6e-2 end to end on these vectors): arm64
    builds verified under qemu-aarch64 by tracing every kernel and replaying the model the manifest
    names; --model names it explicitly. arm64-v8 runs the ARMv8.0 smlal kernels."""
    res = build(smollm2_slice, BuildOptions(out_dir=tmp_path, precision=precision, group_size=group, max_seq_len=512,
                                            target=target))
    meta = read_meta(tmp_path / f"{res.library.stem}.testvectors.npz")[2]
    assert meta["conditioning"] > meta["tolerance"]
    for extra in ([], ["--model", str(smollm2_slice)]):
        proc = subprocess.run([sys.executable, "-m", "qcompile", "verify", str(res.library), *extra],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ": ok: logits" in proc.stdout and "kernel by kernel: " in proc.stdout
        worst = float(proc.stdout.split("largest error ")[1].split()[0])
        assert worst < 1e-5, proc.stdout


@needs_smollm2
def test_verify_without_the_model_is_inconclusive_not_ok(smollm2_slice, tmp_path):
    """Where the end-to-end comparison cannot judge and the model is gone, verify says so and
    fails: it never passes a library it could not check."""
    model = tmp_path / "moved.onnx"
    model.write_bytes(smollm2_slice.read_bytes())
    res = build(model, BuildOptions(out_dir=tmp_path, precision="int8", max_seq_len=512, target="x86_64-v3"))
    model.unlink()
    # whether this CPU's float arithmetic flips a rounding on these vectors is the CPU's business:
    # make the end-to-end comparison miss for sure (by 2x the tolerance), keeping the vectors' meta
    vectors = tmp_path / "moved.testvectors.npz"
    feeds, expected, meta = read_meta(vectors)
    expected["logits"] = expected["logits"] + np.float32(2 * meta["tolerance"] * max(1, np.abs(expected["logits"]).max()))
    selftest.write(vectors, feeds, expected, meta["tolerance"], meta["conditioning"])
    proc = subprocess.run([sys.executable, "-m", "qcompile", "verify", str(res.library)], capture_output=True,
                          text=True)
    assert proc.returncode == 1
    assert ": INCONCLUSIVE: logits" in proc.stdout and "--model MODEL.onnx" in proc.stdout
    assert "is not at" in proc.stderr


def test_kernel_by_kernel_check_names_a_wrong_kernel_and_overwritten_memory(tmp_path):
    """A stand-in for a miscompiled kernel and for a planner that reuses memory too early: one
    traced write and one traced read are changed, and check_steps names the node of each."""
    from qcompile import load, selftest
    from qcompile.build import front
    from qcompile.targets.presets import get_preset
    from qcompile.zoo import LlamaConfig, make_llama
    path = tmp_path / "llama.onnx"
    import onnx
    onnx.save(make_llama(LlamaConfig()), path)
    opts = BuildOptions(out_dir=tmp_path, precision="int8", max_seq_len=32, target="x86_64-v3")
    res = build(path, opts)
    f = front(path, opts, get_preset("x86_64-v3"), "llama", lambda *a: None)
    feeds, _, tolerance = selftest.read(tmp_path / "llama.testvectors.npz")
    _, records = load(res.library).trace(**feeds)
    assert selftest.check_steps(f.reference, feeds, records, tolerance).ok

    quantized = {n.name for n in f.reference.nodes if n.op == "QLinear"}
    qlinear, name, reader = next((w, x, r) for w in records if w.node in quantized for x in w.writes
                                 for r in records if r.step > w.step and x in r.reads)
    right = qlinear.writes[name]
    qlinear.writes[name] = right * np.float32(1.01)
    report = selftest.check_steps(f.reference, feeds, records, tolerance)
    assert not report.ok and f"{name} (node {qlinear.node})" in report.render()
    qlinear.writes[name] = right

    reader.reads[name] = reader.reads[name].copy()
    reader.reads[name].flat[0] += 1
    report = selftest.check_steps(f.reference, feeds, records, tolerance)
    assert not report.ok and report.render() == f"node {reader.node} read '{name}' changed since it was written"


@pytest.fixture(scope="session")
def smollm2_slice_qdq(smollm2_slice) -> Path:
    """The slice through onnxruntime's quantize_static (QDQ, every MatMul, int8 activations with zero
    points, per-channel int8 weights), calibrated on 4 windows of real text; cached beside it."""
    path = smollm2_slice.with_name(smollm2_slice.stem + "_qdq.onnx")
    if path.exists():
        return path
    import logging

    from onnxruntime import quantization
    tokenizer = em.load_smollm2_tokenizer()
    from pydoc_data.topics import topics
    ids = tokenizer("\n\n".join(topics[k] for k in sorted(topics))[:40000])["input_ids"]

    class Windows(quantization.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(_feeds(ids[i * 128:(i + 1) * 128]) for i in range(4))

        def get_next(self):
            return next(self.feeds, None)

    part = path.with_suffix(".part.onnx")
    logging.disable(logging.WARNING)
    try:
        quantization.quantize_static(str(smollm2_slice), str(part), Windows(),
                                     quant_format=quantization.QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                                     per_channel=True, activation_type=quantization.QuantType.QInt8,
                                     weight_type=quantization.QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
    part.rename(path)
    return path


def _feeds(tokens) -> dict[str, np.ndarray]:
    n = len(tokens)
    feeds = {"input_ids": np.asarray(tokens, np.int64)[None], "position_ids": np.arange(n, dtype=np.int64)[None]}
    for i in range(SLICE_LAYERS):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{i}.{kv}"] = np.zeros((1, 3, 0, 64), np.float32)
    return feeds


@needs_smollm2
def test_a_quantize_static_file_runs_on_its_own_activation_scales(smollm2_slice_qdq, tmp_path):
    """issue 21: a QDQ export of the real model computes with the file's static int8 activations
    (scales and zero points) in every imported layer, as onnxruntime does, and passes its self-test;
    kernel by kernel against the reference, which is onnxruntime's math (see test_import_quantized
    for equality with onnxruntime itself on an MLP; over hundreds of tokens of this model int8
    rounding flips separate even onnxruntime's own optimization levels)."""
    res = build(smollm2_slice_qdq, BuildOptions(out_dir=tmp_path, max_seq_len=64, target="native"))
    manifest = json.loads(res.manifest.read_text())
    layers = manifest["quantized_layers"]
    assert len(layers) >= 28 and all(q["activations"].startswith("int8 from the file (scale ") for q in layers)
    record = manifest["self_test"]
    assert record["verified"] and record["kernels"]["largest_error"] < 1e-5, record
