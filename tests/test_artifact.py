"""Built libraries: numbers against onnxruntime, the C API's contract, the file's contents."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import qcompile
from qcompile.artifact.loader import ArtifactError
from qcompile.build import BuildOptions, build
from qcompile.zoo import BertConfig, LlamaConfig, make_bert, make_llama, make_mlp

from .helpers import ort_run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("artifacts")


def _build(workdir: Path, name: str, model, **bounds):
    path = workdir / f"{name}.onnx"
    onnx.save(model, str(path))
    result = build(path, BuildOptions(out_dir=workdir / "out", max_seq_len=bounds.pop("seq", 64), dim_bounds=bounds))
    return path, result


@pytest.fixture(scope="module")
def mlp(workdir):
    return _build(workdir, "mlp", make_mlp(), batch=4)


@pytest.fixture(scope="module")
def llama_kv(workdir):
    return _build(workdir, "llama_kv", make_llama(LlamaConfig(), with_kv_cache=True), batch=2)


def assert_close(ours, theirs):
    for name, expected in theirs.items():
        assert ours[name].shape == expected.shape and ours[name].dtype == expected.dtype, name
        scale = max(1.0, float(np.abs(expected).max()))
        assert float(np.abs(ours[name] - expected).max()) <= 1e-4 * scale, name


def test_mlp_matches_onnxruntime(mlp, rng):
    path, result = mlp
    model = qcompile.load(result.library)
    for batch in (1, 4):
        feeds = {"x": rng.standard_normal((batch, 64)).astype(np.float32)}
        assert_close(model(**feeds), ort_run(path, feeds))


def test_llama_several_lengths_one_artifact(workdir, rng):
    path, result = _build(workdir, "llama", make_llama(LlamaConfig()), batch=2)
    model = qcompile.load(result.library)
    for batch, seq in ((1, 1), (2, 7), (1, 64)):
        feeds = {"input_ids": rng.integers(0, 256, (batch, seq)).astype(np.int64)}
        assert_close(model(**feeds), ort_run(path, feeds))


def test_llama_kv_cache_matches(llama_kv, rng):
    path, result = llama_kv
    model = qcompile.load(result.library)
    for batch, past, seq in ((1, 0, 5), (2, 3, 1), (1, 20, 4)):
        feeds = {"input_ids": rng.integers(0, 256, (batch, seq)).astype(np.int64)}
        for i in range(2):
            for kind in ("key", "value"):
                feeds[f"past_{kind}_{i}"] = rng.standard_normal((batch, 2, past, 16)).astype(np.float32)
        assert_close(model(**feeds), ort_run(path, feeds))


def test_bert_matches(workdir, rng):
    path, result = _build(workdir, "bert", make_bert(BertConfig()), batch=2)
    model = qcompile.load(result.library)
    mask = np.ones((2, 9), np.int64)
    mask[1, 4:] = 0
    feeds = {"input_ids": rng.integers(0, 128, (2, 9)).astype(np.int64), "attention_mask": mask,
             "token_type_ids": rng.integers(0, 2, (2, 9)).astype(np.int64)}
    assert_close(model(**feeds), ort_run(path, feeds))


def test_library_needs_only_libc_libm_pthread(llama_kv):
    lib = llama_kv[1].library
    undefined = subprocess.run(["nm", "-D", "--undefined-only", str(lib)], capture_output=True, text=True,
                               check=True).stdout.split()
    symbols = [s for s in undefined if s not in ("U", "w", "v")]
    glibc = [s for s in symbols if "@GLIBC" in s]
    others = [s for s in symbols if "@GLIBC" not in s and not s.startswith(("_ITM_", "__gmon_start__"))]
    assert glibc and not others, others
    defined = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True, text=True,
                             check=True).stdout.split()[2::3]
    assert defined and all(s.startswith("llama_kv_") for s in defined), defined


def test_manifest_fields(llama_kv):
    manifest = json.loads(llama_kv[1].manifest.read_text())
    for key in ("qcompile_version", "tvm_version", "target", "model", "inputs", "outputs", "kernels", "weights"):
        assert key in manifest
    assert manifest["target"]["preset"] == "native"
    assert manifest["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"],
                                     "max_shape": [2, 64]}
    assert len(manifest["model"]["sha256"]) == 64
    assert all(k["schedule"] for k in manifest["kernels"])


def test_corrupt_weights_are_refused(mlp, workdir):
    path, result = mlp
    weight = numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0])
    data = bytearray(result.library.read_bytes())
    at = data.find(weight.tobytes()[:64])
    assert at > 0, "the weights are embedded in the library"
    data[at + 10] ^= 0x01
    bad_dir = workdir / "bad"
    bad_dir.mkdir()
    (bad_dir / result.library.name).write_bytes(bytes(data))
    shutil.copy(result.manifest, bad_dir / result.manifest.name)
    with pytest.raises(ArtifactError, match="checksum") as info:
        qcompile.load(bad_dir / result.library.name)
    assert info.value.status == 6


@pytest.mark.parametrize("feeds, message", [
    ({"x": np.zeros((1, 65), np.float32)}, "dim 1 is 65; the model takes 64"),
    ({"x": np.zeros((5, 64), np.float32)}, "at most 4"),
    ({"x": np.zeros((64,), np.float32)}, "has 1 dims; the model takes 2"),
])
def test_bad_inputs_get_readable_errors(mlp, feeds, message):
    model = qcompile.load(mlp[1].library)
    with pytest.raises(ArtifactError, match=message):
        model(**feeds)
    # the instance still works after a refused call
    assert model(x=np.zeros((2, 64), np.float32))["y"].shape == (2, 10)


def test_native_target_names_the_host_cpu(workdir, rng):
    path = workdir / "mlp_native.onnx"
    onnx.save(make_mlp(), str(path))
    result = build(path, BuildOptions(out_dir=workdir / "native", target="native", dim_bounds={"batch": 2}))
    target = json.loads(result.manifest.read_text())["target"]
    assert target["tvm_target"]["mcpu"] not in ("<detected>", "native", "generic", "")
    flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split(":", 1)[1].split())
    assert target["cpu_features"] and set(target["cpu_features"]) <= flags
    feeds = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    assert_close(qcompile.load(result.library)(**feeds), ort_run(path, feeds))


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_half_weights_match_a_rounded_reference(workdir, rng, half):
    """--precision bf16 / fp16 store matmul weights and the embedding in 16 bits and compute in
    fp32: the numbers equal the fp32 reference run with those weights rounded to that format, and
    the weights take half the bytes."""
    import ml_dtypes

    from qcompile.frontend import load
    from qcompile.ir.interpret import run
    from qcompile.passes import run_pipeline
    path = workdir / f"llama_{half}.onnx"
    onnx.save(make_llama(LlamaConfig()), str(path))
    built = build(path, BuildOptions(out_dir=workdir / half, precision=half, max_seq_len=32))
    fp32 = build(path, BuildOptions(out_dir=workdir / f"fp32_{half}", precision="fp32", max_seq_len=32))
    graph, _ = run_pipeline(load(path))
    rounded = 0
    for n in graph.nodes:       # the policy rounds every matmul weight and the embedding table
        w = graph.values[n.inputs[1]] if n.op == "MatMul" else graph.values[n.inputs[0]] if n.op == "Gather" else None
        if w is not None and w.const is not None and w.const.ndim == 2:
            w.const = w.const.astype({"bf16": ml_dtypes.bfloat16, "fp16": np.float16}[half]).astype(np.float32)
            rounded += 1
    assert rounded >= 8
    ids = rng.integers(0, 256, (1, 12)).astype(np.int64)
    expected = run(graph, {"input_ids": ids})["logits"]
    got = qcompile.load(built.library)(input_ids=ids)["logits"]
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    exact = ort_run(path, {"input_ids": ids})["logits"]
    assert 1e-6 < np.abs(got - exact).max() < 0.05 * np.abs(exact).max()   # rounding changes the numbers a little
    sizes = [json.loads(r.manifest.read_text())["weights"]["bytes"] for r in (built, fp32)]
    assert sizes[0] < 0.75 * sizes[1]


def test_unaligned_inputs_are_staged(llama_kv, rng):
    """Kernels use aligned vector loads; inputs at odd addresses must still compute right."""
    path, result = llama_kv
    model = qcompile.load(result.library)

    def unaligned(arr):
        raw = np.empty(arr.nbytes + 64 + arr.itemsize, np.uint8)
        start = (-raw.ctypes.data) % 64 + arr.itemsize       # 64-aligned + one element: misaligned
        view = raw[start:start + arr.nbytes].view(arr.dtype).reshape(arr.shape)
        view[...] = arr
        assert view.ctypes.data % 64 != 0
        return view

    feeds = {"input_ids": rng.integers(0, 256, (2, 3)).astype(np.int64)}
    for i in range(2):
        for kind in ("key", "value"):
            feeds[f"past_{kind}_{i}"] = rng.standard_normal((2, 2, 5, 16)).astype(np.float32)
    expected = ort_run(path, feeds)
    assert_close(model(**{k: unaligned(v) for k, v in feeds.items()}), expected)


def test_ops_without_kernels_are_listed_together(tmp_path):
    from qcompile.targets.plan import LoweringError
    from qcompile.testing.model_suite import DATA_DIR
    with pytest.raises(LoweringError) as info:
        build(DATA_DIR / "light" / "light_squeezenet.onnx", BuildOptions(out_dir=tmp_path))
    text = str(info.value)
    assert "Conv: n0, n3" in text and "MaxPool" in text and "GlobalAveragePool" in text
    assert not list(tmp_path.glob("*.so")), "nothing is written when the build fails"


def test_missing_toolchain_is_named_before_any_work(workdir, monkeypatch):
    from qcompile.artifact.toolchain import ToolchainError
    from qcompile.targets.presets import PRESETS
    path = workdir / "mlp_cc.onnx"
    onnx.save(make_mlp(), str(path))
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)
    with pytest.raises(ToolchainError, match="'aarch64-linux-android-clang' that target 'arm64-android' needs") as info:
        build(path, BuildOptions(out_dir=workdir / "android", target="arm64-android", cc="aarch64-linux-android-clang"))
    assert "NDK" in info.value.hint and not (workdir / "android").exists()
    monkeypatch.setitem(PRESETS, "arm64", dataclasses.replace(PRESETS["arm64"], toolchain="aarch64-linux-gnu-gcc-none"))
    with pytest.raises(ToolchainError, match="aarch64-linux-gnu-gcc-none"):
        build(path, BuildOptions(out_dir=workdir / "arm", target="arm64"))


def test_a_library_rebuilt_in_place_loads_its_new_code(tmp_path):
    """dlopen matches by path: without care the second load (and the second build's self-test)
    would run the first build's code. Two different graphs, one file name, one process."""
    from onnx import TensorProto, helper
    x = np.array([[1.5, -2.0, 0.25]], np.float32)
    for op, expected in (("Relu", np.maximum(x, 0)), ("Neg", -x)):
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "g.onnx"))
        result = build(tmp_path / "g.onnx", BuildOptions(out_dir=tmp_path))    # verifies in this process
        np.testing.assert_array_equal(qcompile.load(result.library)(x=x)["y"], expected)


@pytest.mark.parametrize("target", ["x86_64-v3", "cuda", "metal"])
def test_nan_goes_through_relu_max_min_clip_and_reductions_as_in_onnxruntime(tmp_path, target):
    """TVM's max is `a > b ? a : b` on CPUs and fmaxf on GPUs: both drop a NaN, so a model's NaN
    vanished in Relu, Max, Min, Clip, ReduceMax or ReduceMin where onnxruntime (and numpy) keep it
    (found by the graph campaign)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from qcompile.testing.cuda_cpu import link_on_cpu as cuda_on_cpu
    from qcompile.testing.metal_cpu import link_on_cpu as metal_on_cpu
    nodes = [helper.make_node("Relu", ["a"], ["relu"]), helper.make_node("Max", ["a", "b"], ["max"]),
             helper.make_node("Min", ["a", "b"], ["min"]), helper.make_node("Clip", ["a", "lo", "hi"], ["clip"]),
             helper.make_node("ReduceMax", ["ab"], ["rmax"], keepdims=0, axes=[1]),
             helper.make_node("ReduceMin", ["ab"], ["rmin"], keepdims=0, axes=[1])]
    names = ["relu", "max", "min", "clip", "rmax", "rmin"]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [16]) for n in "ab"]
                              + [helper.make_tensor_value_info("ab", TensorProto.FLOAT, [4, 64])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4] if n in ("rmax", "rmin") else [16])
                               for n in names],
                              initializer=[helper.make_tensor("lo", TensorProto.FLOAT, [], [-1.0]),
                                           helper.make_tensor("hi", TensorProto.FLOAT, [], [1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])     # axes as an attribute
    onnx.save(model, str(tmp_path / "nan.onnx"))
    nan = np.nan
    feeds = {"a": np.array([nan, -2, 3, nan, 0.5, -0.1, nan, 7] * 2, np.float32),
             "b": np.array([1, nan, nan, -1, 0, 2, 5, -3] * 2, np.float32),
             "ab": np.arange(256, dtype=np.float32).reshape(4, 64)}
    feeds["ab"][1, 63] = feeds["ab"][2, 0] = feeds["ab"][3, 17] = nan       # row 0 has none
    result = build(tmp_path / "nan.onnx", BuildOptions(out_dir=tmp_path / "out", target=target, keep_temps=True))
    library = {"x86_64-v3": lambda: result.library,
               "cuda": lambda: cuda_on_cpu(tmp_path / "out" / "nan_build", "nan", tmp_path / "cpu" / "nan.so"),
               "metal": lambda: metal_on_cpu(tmp_path / "out" / "nan_metal", "nan", tmp_path / "cpu" / "nan.so")}[target]()
    got = qcompile.load(library)(**feeds)
    want = dict(zip(names, ort.InferenceSession(model.SerializeToString()).run(None, feeds)))
    # onnxruntime's ReduceMax keeps a NaN only when it comes first in the row (it gives 126 and 255
    # for rows 1 and 3): the reductions follow numpy, and the reference interpreter, instead
    want["rmax"], want["rmin"] = feeds["ab"].max(axis=1), feeds["ab"].min(axis=1)
    for name in names:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)     # NaN exactly where expected
