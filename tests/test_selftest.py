"""The build's self-test: every build writes test vectors (inputs and the reference interpreter's
outputs); a library that runs here must match them or the build fails and removes it;
`qcompile verify` reruns them; cross builds write them for the device."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from qcompile import selftest
from qcompile.build import BuildOptions, build
from qcompile.zoo import LlamaConfig, make_llama


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("selftest")
    onnx.save(make_llama(LlamaConfig(), with_kv_cache=True), str(tmp / "llama.onnx"))
    return tmp / "llama.onnx"


def _verify(*args):
    return subprocess.run([sys.executable, "-m", "qcompile", "verify", *map(str, args)], capture_output=True, text=True)


def test_a_build_checks_its_library_against_its_test_vectors(llama, tmp_path):
    res = build(llama, BuildOptions(out_dir=tmp_path, precision="int4", group_size=32, max_seq_len=32,
                                    target="x86_64-v3"))
    record = json.loads(res.manifest.read_text())["self_test"]
    assert record["verified"] and record["tolerance"] == 1e-3
    assert set(record["errors"]) == {"logits", *(f"present_{kv}_{i}" for kv in ("key", "value") for i in range(2))}
    assert max(record["errors"].values()) < 1e-5
    # symbolic dims small and distinct, token ids inside the vocabulary
    assert record["inputs"]["input_ids"] == [1, 2] and record["inputs"]["past_key_0"][2] == 3
    vectors = np.load(tmp_path / record["vectors"])
    assert vectors["input:input_ids"].max() < LlamaConfig().vocab_size
    proc = _verify(res.library)
    assert proc.returncode == 0 and f"{res.library}: ok: logits " in proc.stdout
    # vectors that disagree: verify says so and fails
    arrays = dict(vectors)
    arrays["output:logits"] = arrays["output:logits"] + 1.0
    np.savez(tmp_path / "bad.npz", **arrays)
    proc = _verify(res.library, "--vectors", tmp_path / "bad.npz")
    assert proc.returncode == 1 and "MISMATCH: logits " in proc.stdout and "present_key_0 " in proc.stdout


def test_a_library_that_disagrees_is_removed(llama, tmp_path, monkeypatch):
    """A stand-in for a miscompiled kernel: the reference the library is checked against is off."""
    write = selftest.write
    monkeypatch.setattr(selftest, "write", lambda path, feeds, expected, tol, *rest: write(
        path, feeds, {k: v * 1.5 + 1 for k, v in expected.items()}, tol, *rest))
    with pytest.raises(selftest.VerifyError, match=r"\[verify\] the built library disagrees with the reference "
                                                   r"interpreter on its test vectors: logits .*library was removed"):
        build(llama, BuildOptions(out_dir=tmp_path, max_seq_len=32, target="x86_64-v3"))
    assert not (tmp_path / "llama.so").exists()
    res = build(llama, BuildOptions(out_dir=tmp_path, max_seq_len=32, target="x86_64-v3", verify=False))
    assert res.library.exists()
    assert json.loads(res.manifest.read_text())["self_test"] == {
        "vectors": "llama.testvectors.npz", "inputs": json.loads(res.manifest.read_text())["self_test"]["inputs"],
        "verified": False, "conditioning": 0.0, "why_not": "--no-verify"}


def test_a_cross_build_writes_vectors_for_the_device(llama, tmp_path):
    res = build(llama, BuildOptions(out_dir=tmp_path, max_seq_len=32, target="arm64", precision="int8"))
    record = json.loads(res.manifest.read_text())["self_test"]
    assert not record["verified"] and record["why_not"] == "the library is built for another machine"
    assert (tmp_path / "llama.testvectors.npz").exists()
    proc = _verify(tmp_path / "missing.so")
    assert proc.returncode == 1 and "no test vectors at" in proc.stderr and "copy it too" in proc.stderr
    # here, the aarch64 library runs under qemu (vector_runner.c reads and writes the vectors as files)
    proc = _verify(res.library)
    assert proc.returncode == 0 and f"{res.library} (under qemu-aarch64 -cpu max): ok: logits " in proc.stdout, \
        proc.stdout + proc.stderr
    arrays = dict(np.load(tmp_path / "llama.testvectors.npz"))
    arrays["output:present_value_1"] = arrays["output:present_value_1"] * 2
    np.savez(tmp_path / "bad.npz", **arrays)
    proc = _verify(res.library, "--vectors", tmp_path / "bad.npz")
    assert proc.returncode == 1 and "MISMATCH: logits " in proc.stdout, proc.stdout + proc.stderr


def test_a_sanitized_build_is_not_verified_in_python(llama, tmp_path):
    res = build(llama, BuildOptions(out_dir=tmp_path, max_seq_len=32, target="x86_64-v3", sanitize="address"))
    assert json.loads(res.manifest.read_text())["self_test"]["why_not"] == (
        "an address-sanitized library loads only into a program built with -fsanitize=address")
    proc = _verify(res.library)
    assert proc.returncode == 1 and "address-sanitized debug build" in proc.stderr, proc.stderr


def test_only_elements_with_a_finite_reference_are_judged():
    """Random inputs can put a Pow or a Log outside its domain, and Relu(NaN) is 0 in the library
    (x86 max) but NaN in numpy: found by the graph campaign (Relu(Pow(x, clip(y))) with x < 0), where
    the build removed a correct library. Where the reference is a number, NaN and inf still fail."""
    nan, inf = np.nan, np.inf
    assert selftest._error(np.array([nan, 1.0, inf]), np.array([nan, 1.0, inf])) == 0.0
    assert selftest._error(np.array([0.0, 1.0, 5.0]), np.array([nan, 1.0, -inf])) == 0.0
    assert selftest._error(np.array([nan, 1.0]), np.array([0.0, 1.0])) == inf
    assert selftest._error(np.array([1.0, inf]), np.array([1.0, 2.0])) == inf
    assert selftest._error(np.array([3.0, 0.0]), np.array([2.0, 4.0])) == 1.0     # |4| / max(1, 4)
    assert selftest._error(np.array([3.0, 9.0]), np.array([2.0, nan])) == 0.5     # |1| / max(1, 2): NaN sets no scale


def test_a_relu_of_a_nan_does_not_fail_a_correct_build(tmp_path):
    """The graph campaign's find: the self-test's random x4 is negative, Pow(x4, 0.4) is NaN, and
    Relu(NaN) is NaN in numpy but 0 in the library. The build removed a correct library."""
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Clip", ["x0", "lo", "hi"], ["v3"]), helper.make_node("Pow", ["x4", "v3"], ["v5"]),
             helper.make_node("Relu", ["v5"], ["v6"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x0", "x4")],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("v5", "v6")],
        initializer=[helper.make_tensor("lo", TensorProto.FLOAT, [], [-2.0]),
                     helper.make_tensor("hi", TensorProto.FLOAT, [], [2.0])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "g.onnx"))
    res = build(tmp_path / "g.onnx", BuildOptions(out_dir=tmp_path, target="x86_64-v3"))
    vectors = np.load(tmp_path / "g.testvectors.npz")
    assert np.isnan(vectors["output:v6"]).all()                 # the case really is out of Pow's domain
    assert json.loads(res.manifest.read_text())["self_test"]["errors"] == {"v5": 0.0, "v6": 0.0}
