"""Bad inputs give one clear qcompile error naming the problem, never a deep traceback."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from qcompile import api
from qcompile.cli import main
from qcompile.errors import InvalidModelError, ModelLoadError, QCompileError, UnsupportedOpsError
from qcompile.frontend import from_proto, load
from qcompile.zoo import make_mlp


def _matmul_model(extra_nodes=(), initializers=True, opset=18):
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3], np.ones(12, np.float32))
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm")] + list(extra_nodes)
    last = nodes[-1].output[0]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["n", 3])],
                              initializer=[w] if initializers else [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        load(tmp_path / "nope.onnx")


def test_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="is a directory"):
        load(tmp_path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is a README, not a model\n" * 20)
    with pytest.raises(ModelLoadError, match="text file"):
        load(path)


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.9])
def test_truncated_file(tmp_path, fraction):
    data = make_mlp().SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises((ModelLoadError, InvalidModelError), match="truncated|corrupted|cannot be read|checker"):
        load(path)


def test_unknown_ops_are_listed_together():
    nodes = [helper.make_node("FancyOp", ["h"], ["a"], name="fancy1"),
             helper.make_node("FancyOp", ["a"], ["b"], name="fancy2"),
             helper.make_node("Relu", ["b"], ["c"], name="relu"),
             helper.make_node("Loop2", ["c"], ["d"], name="loopy", domain="com.example")]
    model = _matmul_model(nodes)
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpsError) as info:
        from_proto(model)
    err = info.value
    assert set(err.unsupported) == {"FancyOp", "com.example.Loop2"}
    assert err.unsupported["FancyOp"] == ["fancy1", "fancy2"]
    text = str(err)
    assert "fancy1, fancy2" in text and "com.example.Loop2: loopy" in text and "opset 18" in text


def test_missing_initializer_names_node_and_value():
    with pytest.raises(InvalidModelError) as info:
        from_proto(_matmul_model(initializers=False))
    assert info.value.node == "mm" and info.value.op == "MatMul"
    assert "'w'" in str(info.value) and "initializer" in str(info.value)


def test_opset_too_new():
    model = _matmul_model(opset=99)
    with pytest.raises(UnsupportedOpsError, match="opset 99"):
        from_proto(model)


def test_wrong_initializer_size():
    model = _matmul_model()
    model.graph.initializer[0].float_data[:] = [1.0] * 5
    with pytest.raises(InvalidModelError, match=r"tensor name: w\) float_data size \(5\)"):
        from_proto(model)


@pytest.mark.parametrize("op", ["MatMul", "Gemm"])
def test_inner_dims_that_differ_name_the_node(op):
    """Found by hand-made huge dims: a MatMul/Gemm whose K differs was accepted (the ONNX checker
    does not see it) and a kernel would read past one operand."""
    model = _matmul_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 5
    model.graph.node[0].op_type = op
    with pytest.raises(InvalidModelError, match=rf"node 'mm', op {op}: {op} multiplies \('n', 5\) by \(4, 3\): "
                                                r"the inner dims 5 and 4 differ"):
        from_proto(model)


def test_a_tensor_too_large_to_index_is_refused_at_plan_time(tmp_path):
    from qcompile.build import BuildOptions, build
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2**20, "n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2**20, "n"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "big.onnx"))
    with pytest.raises(QCompileError, match=r"\[lower\] value 'x' \[1048576, 'n'\] holds up to 4,294,967,296 "
                                            r"elements at the bounds \{'n': 4096\}; a tensor may hold at most 2\*\*31 - 1"):
        build(tmp_path / "big.onnx", BuildOptions(out_dir=tmp_path / "out", dim_bounds={"n": 4096}))
    assert not (tmp_path / "out" / "big.so").exists()


def test_cycle_is_rejected():
    nodes = [helper.make_node("Relu", ["h2"], ["h1"], name="a"), helper.make_node("Relu", ["h1"], ["h2"], name="b")]
    model = _matmul_model()
    model.graph.node.extend(nodes)
    with pytest.raises(QCompileError):
        from_proto(model)


def test_external_data_roundtrip_and_missing_data(tmp_path):
    model = make_mlp()
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    graph = load(path)
    assert graph.param_count() == sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="external data"):
        load(path)


def test_cli_prints_one_paragraph_and_exit_1(tmp_path, capsys):
    path = tmp_path / "notes.onnx"
    path.write_text("hello")
    assert main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("qcompile: error: [load]") and "Traceback" not in err


def test_inspect_lists_unsupported_without_raising(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_matmul_model([helper.make_node("FancyOp", ["h"], ["a"], name="fancy1")]), str(path))
    info = api.inspect(path)
    assert info.unsupported == {"FancyOp": ["fancy1"]}
    assert info.graph is None
    assert "FancyOp: fancy1" in info.render()
