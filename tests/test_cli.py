"""The command line as a user runs it: a subprocess, its stdout/stderr and exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from qcompile.zoo import LlamaConfig, make_llama


def qcompile(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "qcompile", *map(str, args)], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def llama_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "llama.onnx"
    onnx.save(make_llama(LlamaConfig()), str(path))
    return path


def test_help_teaches_every_command():
    out = qcompile("--help").stdout
    for command in ("inspect", "targets", "passes"):
        assert command in out
    assert "QCOMPILE_DEBUG" in out
    assert "--dump-ir" in qcompile("inspect", "--help").stdout


def test_inspect_reports_histogram_io_and_params(llama_path):
    model = onnx.load(str(llama_path))
    out = qcompile("inspect", llama_path).stdout
    assert "input_ids  int64[batch,seq]" in out
    assert "logits     fp32[batch,seq,256]" in out
    n_params = sum(int(t.dims[0]) * (int(t.dims[1]) if len(t.dims) > 1 else 1) for t in model.graph.initializer)
    assert f"params   {n_params:,}" in out
    n_matmul = sum(1 for n in model.graph.node if n.op_type == "MatMul")
    assert f"{n_matmul:6d}  MatMul" in out
    assert "all supported" in out


def test_inspect_json_matches_the_model(llama_path):
    data = json.loads(qcompile("inspect", llama_path, "--json").stdout)
    model = onnx.load(str(llama_path))
    assert data["op_histogram"]["MatMul"] == sum(1 for n in model.graph.node if n.op_type == "MatMul")
    assert data["inputs"] == [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]}]
    assert data["unsupported"] == {}


def test_inspect_ir_timing_and_dump(llama_path, tmp_path):
    out = qcompile("inspect", llama_path, "--ir", "--timing", "--dump-ir", tmp_path / "ir", "--max-seq-len", 512).stdout
    assert "graph llama (opset ai.onnx=18)" in out
    assert "dims seq<=512" in out
    assert "pipeline 'default'" in out and "fold_constants" in out
    assert (tmp_path / "ir" / "000_input.txt").exists()


def test_targets_and_passes_listings():
    out = qcompile("targets").stdout
    for name in ("x86_64", "x86_64-v3", "native", "arm64", "arm64-i8mm", "arm64-android", "apple-m", "cuda", "cuda-sm90", "metal"):
        assert f"\n{name} " in "\n" + out
    presets = json.loads(qcompile("targets", "--json").stdout)
    assert presets["x86_64"]["tvm_target"]["mcpu"] == "sapphirerapids"
    out = qcompile("passes").stdout
    assert "fold_constants" in out and "default:" in out


@pytest.mark.parametrize("content, phase", [(None, "[load]"), (b"\x08\x07garbage\xff\xff", "[load]"),
                                             (b"name: not a model\n", "[load]")])
def test_bad_files_exit_1_with_one_paragraph(tmp_path, content, phase):
    path = tmp_path / "bad.onnx"
    if content is not None:
        path.write_bytes(content)
    proc = qcompile("inspect", path, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("qcompile: error: " + phase)
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) <= 3


def test_usage_errors_exit_2(llama_path):
    assert qcompile("inspect", check=False).returncode == 2
    proc = qcompile("inspect", llama_path, "--ir", "--pipeline", "nope", check=False)
    assert proc.returncode == 2 and "unknown pipeline 'nope'" in proc.stderr


def test_build_and_run_with_relative_paths(tmp_path):
    """The README's main job: build into a relative directory, then run on a .npy input."""
    from qcompile.zoo import make_mlp
    onnx.save(make_mlp(), str(tmp_path / "mlp.onnx"))
    import numpy as np
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)

    def run_cli(*args):
        return subprocess.run([sys.executable, "-m", "qcompile", *args], capture_output=True, text=True, cwd=tmp_path)

    built = run_cli("build", "mlp.onnx", "-o", "out", "--dim", "batch=2")
    assert built.returncode == 0, built.stderr
    assert "built out/mlp.so" in built.stdout and "import" in built.stderr and "link" in built.stderr
    ran = run_cli("run", "out/mlp.so", "--input", "x=x.npy", "--save", "res")
    assert ran.returncode == 0, ran.stderr
    import onnxruntime as ort
    expected = ort.InferenceSession(str(tmp_path / "mlp.onnx")).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(tmp_path / "res" / "y.npy"), expected, rtol=1e-5, atol=1e-5)
    bad = run_cli("build", "mlp.onnx", "--dim", "nope=3")
    assert bad.returncode == 1 and "unknown symbolic dims: nope" in bad.stderr


def test_a_planned_target_is_refused_before_any_work(tmp_path, monkeypatch):
    import dataclasses

    from qcompile.build import BuildOptions, QCompileError, build
    from qcompile.targets import presets
    from qcompile.zoo import make_mlp
    onnx.save(make_mlp(), str(tmp_path / "mlp.onnx"))
    monkeypatch.setitem(presets.PRESETS, "riscv", dataclasses.replace(presets.PRESETS["x86_64"], name="riscv",
                                                                        summary="RISC-V", status="planned"))
    with pytest.raises(QCompileError, match=r"\[options\] target riscv .*planned but cannot be built yet"):
        build(tmp_path / "mlp.onnx", BuildOptions(target="riscv", out_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_metal_build_off_a_mac_says_how_to_finish_it(tmp_path):
    from qcompile.zoo import make_mlp
    onnx.save(make_mlp(), str(tmp_path / "mlp.onnx"))
    proc = qcompile("build", str(tmp_path / "mlp.onnx"), "--target", "metal", "-o", str(tmp_path / "out"))
    folder = tmp_path / "out" / "mlp_metal"
    assert "Apple's Metal compiler runs only on macOS; on a Mac, run: sh " + str(folder / "build.sh") in proc.stdout
    assert (folder / "kernels.metal").exists() and not (tmp_path / "out" / "mlp.dylib").exists()



def test_run_and_generate_errors_say_what_the_file_is(llama_path, tmp_path):
    """issue 21's tracebacks and wrong messages: every bad input file is one clear error (exit 1)."""
    import numpy as np
    out = tmp_path / "out"
    qcompile("build", llama_path, "-o", out, "--max-seq-len", "16")
    library = out / "llama.so"
    cases = [
        (("run", library, "--input", f"input_ids={tmp_path / 'missing.npy'}"),
         f"[options] --input input_ids={tmp_path / 'missing.npy'}: no such file"),
        (("run", library, "--input", f"input_ids={llama_path}"),
         f"[options] --input input_ids={llama_path}: not a .npy file (it has no NumPy header)"),
        (("run", llama_path), f"[load] '{llama_path}' is an ONNX model, not a library built by qcompile"),
        (("generate", llama_path, "--prompt-ids", "1,2"), f"hint: build it first: qcompile build {llama_path}"),
    ]
    np.save(tmp_path / "ids.npy", np.array([[1, 2]]))
    cases.append((("run", library, "--input", f"input_ids={tmp_path / 'ids.npy'}", "--input",
                   f"mask={tmp_path / 'ids.npy'}"), "[run] unknown inputs ['mask']; the model takes ['input_ids']"))
    for args, message in cases:
        proc = qcompile(*args, check=False)
        assert proc.returncode == 1 and message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr)
    missing = qcompile("run", library, check=False)
    assert "missing inputs ['input_ids']; the model takes" in missing.stderr and "unknown inputs" not in missing.stderr


def test_a_library_for_another_machine_is_named_as_such(tmp_path):
    from qcompile.zoo import make_mlp
    onnx.save(make_mlp(), str(tmp_path / "mlp.onnx"))
    qcompile("build", tmp_path / "mlp.onnx", "--target", "arm64", "-o", tmp_path / "out", "--no-verify")
    for args in (("run", tmp_path / "out" / "mlp.so"), ("generate", tmp_path / "out" / "mlp.so", "--prompt-ids", "1")):
        proc = qcompile(*args, check=False)
        assert proc.returncode == 1 and "is a library for aarch64; this machine is x86_64" in proc.stderr, proc.stderr
        assert "qcompile verify" in proc.stderr


@pytest.mark.parametrize("flag", [("--max-seq-len", "0"), ("--max-seq-len", "-3")])
def test_a_bound_below_one_is_refused_before_any_work(llama_path, tmp_path, flag):
    proc = qcompile("build", llama_path, "-o", tmp_path / "out", *flag, check=False)
    assert proc.returncode == 1 and f"[options] --max-seq-len must be a positive number of elements, got " \
                                   f"{flag[1]}" in proc.stderr
    assert not (tmp_path / "out").exists()
