"""Fuzzed inputs (qcompile.testing.fuzz): corrupted models through the build's front half end in
a build or a qcompile error, never another exception or a hang, on a fixed budget of cases drawn
by hypothesis; and the two escapes fuzzing found stay fixed (names and strings that are not
UTF-8). tools/fuzz.py runs longer campaigns."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompile.errors import InvalidModelError, QCompileError
from qcompile.frontend import load
from qcompile.testing import fuzz
from qcompile.zoo import make_mlp

SEEDS = fuzz.seed_models()


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.integers(0, len(SEEDS) - 1), seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4),
       precision=st.sampled_from(fuzz.PRECISIONS))
def test_a_corrupted_model_is_built_or_refused_never_crashes(tmp_path_factory, model, seed, count, precision):
    data, done = fuzz.mutate(SEEDS[model], random.Random(seed), count)
    outcome = fuzz.run_case(data, precision, tmp_path_factory.mktemp("fuzz"), timeout=120)
    assert outcome.kind in ("built", "refused"), f"{done}: {outcome.kind}: {outcome.detail}"


def _with_bad_byte(data: bytes, text: bytes) -> bytes:
    """`text` (a name in the model) with its first byte made invalid UTF-8, same length."""
    assert text in data
    return data.replace(text, b"\xed" + text[1:], 1)


@pytest.mark.parametrize("what", ["node name", "value name"])
def test_names_that_are_not_utf8_are_a_corrupted_file(tmp_path, what):
    model = make_mlp()
    text = (model.graph.node[0].name if what == "node name" else model.graph.node[0].output[0]).encode()
    path = tmp_path / "bad.onnx"
    path.write_bytes(_with_bad_byte(model.SerializeToString(), text))
    with pytest.raises(InvalidModelError, match="not valid UTF-8.*the file is corrupted"):
        load(path)


def test_a_gather_past_a_shapes_rank_is_a_malformed_model(tmp_path):
    from onnx import TensorProto, helper
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "i"], ["d"], name="pick")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("d", TensorProto.INT64, [1])],
                              initializer=[helper.make_tensor("i", TensorProto.INT64, [1], [7])])
    path = tmp_path / "gather.onnx"
    import onnx
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(InvalidModelError, match=r"node 'pick'.*Gather reads indices \[7\] of a shape of rank 2"):
        load(path)


def test_a_nan_weight_is_named_when_it_is_quantized(tmp_path):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from qcompile.passes.assign_precision import PrecisionError
    model = make_mlp()
    w = model.graph.initializer[0]
    values = numpy_helper.to_array(w).copy()
    values.flat[3] = np.nan
    w.CopyFrom(numpy_helper.from_array(values, w.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    from qcompile.build import BuildOptions, front
    from qcompile.targets.presets import get_preset
    with pytest.raises(PrecisionError, match=r"\[precision\] node .*non-finite value"):
        front(tmp_path / "nan.onnx", BuildOptions(precision="int8"), get_preset("x86_64-v3"), "m", lambda *a: None)


def test_compiled_random_graph_finds_stay_fixed(tmp_path):
    """What compiling random graphs found: a one-element constant operand of MatMul was folded into
    the kernel as a literal (the MatMul kernel indexes it: a TypeError), and a 0-d input reached
    the library as 1-d (numpy's ascontiguousarray)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    import qcompile
    from qcompile.build import BuildOptions, build
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"), helper.make_node("Mul", ["y", "s"], ["z"], name="mul")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 2, 1]),
              helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [3, 2])],
        initializer=[helper.make_tensor("w", TensorProto.FLOAT, [1], [-2.75])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "g.onnx"))
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(3, 2, 1), "s": np.array(0.5, np.float32)}
    library = qcompile.load(build(tmp_path / "g.onnx", BuildOptions(out_dir=tmp_path, target="x86_64-v3")).library)
    want = ort.InferenceSession(str(tmp_path / "g.onnx")).run(None, feeds)[0]
    np.testing.assert_allclose(library(**feeds)["z"], want, rtol=1e-6)


def test_a_cache_input_fixed_where_its_pair_is_symbolic_is_refused(tmp_path):
    """Found by the "dim" mutation: past_key_0's past dim fixed at 3 while past_value_0's stays
    symbolic. ONNX shape inference then names a dim unk__0, which has no bound: the plan said
    ValueError; it now names the value it cannot size."""
    import onnx

    from qcompile.build import BuildOptions, front
    from qcompile.targets.presets import get_preset
    from qcompile.zoo import LlamaConfig, make_llama
    model = make_llama(LlamaConfig(hidden_size=32, intermediate_size=64, vocab_size=64, num_layers=1),
                       with_kv_cache=True)
    past_key = next(i for i in model.graph.input if i.name == "past_key_0")
    past_key.type.tensor_type.shape.dim[2].dim_value = 3
    onnx.save(model, str(tmp_path / "m.onnx"))
    with pytest.raises(QCompileError, match=r"\[lower\] value '.*' \['unk__0'\]: no upper bound for symbolic dim\(s\) "
                                            r"unk__0, so its storage cannot be sized"):
        front(tmp_path / "m.onnx", BuildOptions(max_seq_len=16), get_preset("x86_64-v3"), "m", lambda *a: None)


def test_the_dim_mutation_changes_one_declared_dim():
    import onnx
    data = make_mlp().SerializeToString()
    rng = random.Random(0)
    for _ in range(40):
        out, at = fuzz._odd_dim(bytearray(data), rng)
        value = int(at.rsplit("=", 1)[1])
        assert value in fuzz.ODD_DIMS and out != data
        assert onnx.load_from_string(bytes(out)) != make_mlp()
