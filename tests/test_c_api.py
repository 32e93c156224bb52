"""The generated C API used from C: examples/run_model.c against three models (numbers checked
against onnxruntime); API misuse and threads through tests/c/capi_misuse.c, and decoder sessions
from two threads through tests/c/session_threads.c, each plain, under AddressSanitizer + UBSan and
under ThreadSanitizer (against a library built with `build --sanitize`, so its executor and
runtime are instrumented too); the num_threads option and $QCOMPILE_NUM_THREADS; and the refusal
to run on a CPU that lacks a feature the library was built for."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

import qcompile
from qcompile.artifact.loader import ArtifactError
from qcompile.build import BuildOptions, build
from qcompile.errors import QCompileError
from qcompile.targets.presets import PRESETS
from qcompile.zoo import BertConfig, LlamaConfig, make_bert, make_llama, make_mlp

from .helpers import example_feeds, ort_run, parse_outputs

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "run_model.c"
DRIVER = Path(__file__).parent / "c" / "capi_misuse.c"
SESSION_DRIVER = Path(__file__).parent / "c" / "session_threads.c"
# the flags examples/README.md promises the example compiles with
EXAMPLE_CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror", "-std=c11"]
ASAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all", "-g"]
TSAN = ["-fsanitize=thread", "-g"]
ALL = "1000000000"   # run_model -n: print every value


# --------------------------------------------------------------------------- helpers


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QCOMPILE_", "ASAN_", "UBSAN_", "TSAN_"))}
    env.update(ASAN_OPTIONS="detect_leaks=1", UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
               TSAN_OPTIONS="halt_on_error=1:exitcode=66")
    env.update(extra)
    return env


def _gcc(out: Path, source: Path, lib: Path, flags, defines=()):
    d = lib.parent
    cmd = ["gcc", *flags, *defines, str(source), f"-I{d}", f"-L{d}", f"-l:{lib.name}", f"-Wl,-rpath,{d}",
           "-lm", "-pthread", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    assert proc.stderr == "", proc.stderr   # not one warning
    return out


def _run(exe: Path, *args, env=None, expect_ok=True, timeout=60):
    proc = subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, env=_env(**(env or {})),
                          timeout=timeout)
    if expect_ok:
        assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert proc.stderr == "", proc.stderr   # no sanitizer reports either
    return proc


def _build(workdir: Path, stem: str, model, out: str = "out", **kw):
    path = workdir / f"{stem}.onnx"
    if not path.exists():
        onnx.save(model, str(path))
    result = build(path, BuildOptions(out_dir=workdir / out, **kw))
    return path, result.library


def parse_refs(stdout: str) -> dict[int, np.ndarray]:
    return {int(line.split()[1]): np.array(line.split()[2:], np.float32)
            for line in stdout.splitlines() if line.startswith("REF ")}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("capi")


@pytest.fixture(scope="module")
def mlp(workdir):
    return _build(workdir, "mlp", make_mlp(), dim_bounds={"batch": 4}, max_seq_len=64)


@pytest.fixture(scope="module")
def llama_kv(workdir):
    return _build(workdir, "llama_kv", make_llama(LlamaConfig(), with_kv_cache=True), dim_bounds={"batch": 2},
                  max_seq_len=32)


@pytest.fixture(scope="module")
def bert(workdir):
    return _build(workdir, "bert", make_bert(BertConfig()), dim_bounds={"batch": 2}, max_seq_len=16)


@pytest.fixture(scope="module")
def example(workdir, mlp, llama_kv, bert):
    """run_model compiled once per artifact, with exactly the README's flags."""
    exes = {}
    for onnx_path, lib in (mlp, llama_kv, bert):
        name = lib.stem
        exes[name] = (onnx_path, lib, _gcc(workdir / f"run_{name}", EXAMPLE, lib, EXAMPLE_CFLAGS,
                                          [f"-DQC_NAME={name}"]))
    return exes


DRIVER_FLAGS = ["-O1", "-std=c11", "-Wall", "-Wextra", "-Werror"]


@pytest.fixture(scope="module")
def plain_driver(workdir, mlp):
    return _gcc(workdir / "capi_misuse_plain", DRIVER, mlp[1], DRIVER_FLAGS)


@pytest.fixture(scope="module", params=["plain", "asan", "tsan"])
def driver(request, workdir, mlp, plain_driver):
    """The misuse driver; under a sanitizer, against a library whose executor and runtime are
    instrumented with the same one (so races and overflows inside the artifact are seen)."""
    if request.param == "plain":
        return mlp[0], plain_driver
    flags = DRIVER_FLAGS + (ASAN if request.param == "asan" else TSAN)
    return mlp[0], _gcc(workdir / f"capi_misuse_{request.param}", DRIVER, _sanitized(workdir, "mlp", request.param),
                        flags)


SANITIZE = {"asan": "address", "tsan": "thread"}
SANITIZER_FLAGS = {"plain": [], "asan": ASAN, "tsan": TSAN}


def _sanitized(workdir: Path, stem: str, kind: str) -> Path:
    """The MLP or the decoder (as the module's fixtures build them, which must come first) built
    again with `build --sanitize` (once per module), into OUT=kind/."""
    lib = workdir / kind / f"{stem}.so"
    if not lib.exists():
        bounds = dict(dim_bounds={"batch": 4}) if stem == "mlp" else dict(dim_bounds={"batch": 2}, max_seq_len=32)
        _build(workdir, stem, None, out=kind, name=stem, sanitize=SANITIZE[kind], **bounds)
    return lib


# --------------------------------------------------------------------------- the example


EXAMPLE_CASES = [
    ("mlp", {"batch": 1}, {}),
    ("mlp", {"batch": 4}, {}),
    ("llama_kv", {"batch": 1, "seq": 5, "past": 0}, {}),
    ("llama_kv", {"batch": 2, "seq": 4, "past": 3}, {}),
    ("llama_kv", {"batch": 1, "seq": 1, "past": 32}, {}),
    ("bert", {"batch": 2, "seq": 9}, {"token_type_ids": 2, "attention_mask": 2}),
    ("bert", {"batch": 1, "seq": 16}, {"token_type_ids": 2, "attention_mask": 3}),
]


@pytest.mark.parametrize("name, env, modulus", EXAMPLE_CASES,
                         ids=[f"{n}-" + "-".join(f"{k}{v}" for k, v in e.items()) for n, e, _ in EXAMPLE_CASES])
def test_example_matches_onnxruntime(example, name, env, modulus):
    onnx_path, lib, exe = example[name]
    args = [f"{k}={v}" for k, v in env.items()] + [f"{k}%{v}" for k, v in modulus.items()] + ["-n", ALL]
    printed = parse_outputs(_run(exe, *args).stdout)
    model = qcompile.load(lib)
    feeds = example_feeds(model, env, modulus)
    expected = ort_run(onnx_path, feeds)
    ours = model(**feeds)
    assert list(printed) == list(expected)   # every output, in order
    for out, want in expected.items():
        got = printed[out]
        assert got["dtype"] == "float32" and got["shape"] == want.shape, (out, got["shape"], want.shape)
        values = np.array(got["values"], np.float32).reshape(want.shape)
        scale = max(1.0, float(np.abs(want).max()))
        assert float(np.abs(values - want).max()) <= 1e-4 * scale, out
        # %.9g round-trips float32: the example's numbers are the library's own, bit for bit,
        # which also shows the C program built the very inputs generated here
        np.testing.assert_array_equal(values, ours[out])
        assert got["sum"] == pytest.approx(float(values.astype(np.float64).sum()), rel=1e-12, abs=1e-12)


def test_example_prints_signature_and_first_values(example):
    mlp_out = _run(example["mlp"][2], "batch=2").stdout
    assert "input 0 x: float32 [batch<=4, 64]\n" in mlp_out
    assert "output 0 y: float32 [batch<=4, 10]\n" in mlp_out
    assert "dim batch = 2\n" in mlp_out
    short = parse_outputs(mlp_out)["y"]
    assert len(short["values"]) == 9 and short["values"][-1] == "..."   # 8 values, then "..."
    full = parse_outputs(_run(example["mlp"][2], "batch=2", "-n", ALL).stdout)["y"]
    assert short["values"][:8] == full["values"][:8] and len(full["values"]) == 20
    assert short["sum"] == full["sum"]

    llama_out = _run(example["llama_kv"][2], "seq=3", "-n", "2").stdout
    assert "input 1 past_key_0: float32 [batch<=2, 2, past<=32, 16]\n" in llama_out
    assert "output 1 present_key_0: float32 [batch<=2, 2, past+seq<=64, 16]\n" in llama_out
    assert "dim batch = 1\ndim seq = 3\ndim past = 1\n" in llama_out   # unset dims default to 1
    assert parse_outputs(llama_out)["present_key_0"]["shape"] == (1, 2, 4, 16)


def test_example_reports_bad_arguments(example):
    exe = example["mlp"][2]
    proc = _run(exe, "batch=2", "sequence=3", expect_ok=False)
    assert proc.returncode == 2 and "unknown argument 'sequence=3'" in proc.stderr
    assert "batch (at most 4)" in proc.stderr
    proc = _run(exe, "batch=5", expect_ok=False)
    assert proc.returncode == 1
    assert "run failed (status 4): input 'x' dim 0 ('batch') is 5; this library was built for at most 4" \
        in proc.stderr
    proc = _run(exe, "x%3", expect_ok=False)   # x is a float input
    assert proc.returncode == 2 and "'x%3'" in proc.stderr


def test_example_thread_settings_give_identical_outputs(example):
    exe = example["llama_kv"][2]
    args = ("batch=2", "seq=6", "past=5", "-n", ALL)
    base = parse_outputs(_run(exe, *args).stdout)
    assert base and all(len(o["values"]) == np.prod(o["shape"]) for o in base.values())
    for extra, env in (((), {"QCOMPILE_NUM_THREADS": "1"}), (("-t", "1"), {}), (("-t", "2"), {})):
        assert parse_outputs(_run(exe, *args, *extra, env=env).stdout) == base, (extra, env)


# --------------------------------------------------------------------------- misuse and threads


def test_misuse_returns_documented_status_and_message(driver):
    onnx_path, exe = driver
    out = _run(exe, "misuse").stdout
    assert out.rstrip().endswith("28 cases\nOK"), out[-2000:]
    # the reference outputs every case compares against are right
    refs = parse_refs(out)
    assert sorted(refs) == [1, 2, 3, 4]
    for batch, values in refs.items():
        feeds = {"x": np.sin(np.arange(batch * 64, dtype=np.float64)).astype(np.float32).reshape(batch, 64)}
        want = ort_run(onnx_path, feeds)["y"]
        assert float(np.abs(values.reshape(want.shape) - want).max()) <= 1e-4 * max(1.0, float(np.abs(want).max()))


@pytest.mark.parametrize("mode", ["concurrent", "shared"])
def test_threads(driver, mode):
    # concurrent: two instances (2 threads each) run at once from two pthreads, 1500 runs each;
    # shared: one instance from two pthreads under a mutex, then handed from thread to thread.
    # Every run's outputs must equal the single-threaded reference bit for bit.
    onnx_path, exe = driver
    out = _run(exe, mode, 1500).stdout
    assert "1500 runs per thread\nOK" in out
    refs = parse_refs(out)
    feeds = {"x": np.sin(np.arange(4 * 64, dtype=np.float64)).astype(np.float32).reshape(4, 64)}
    want = ort_run(onnx_path, feeds)["y"]
    assert float(np.abs(refs[4].reshape(4, 10) - want).max()) <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_one_instance_from_two_threads_refuses_the_overlap(driver):
    # no lock: each call runs right or returns MLP_ERR_BUSY with the message on its own thread and
    # its outputs untouched; under TSan the guard itself must be race-free
    out = _run(driver[1], "busy", 1500, timeout=300).stdout
    assert out.rstrip().endswith("OK"), out
    refused = int(out.split(" refused as busy")[0].split()[-1])
    assert refused >= 10, out


@pytest.mark.parametrize("kind", ["plain", "asan", "tsan"])
@pytest.mark.parametrize("mode", ["separate", "shared", "stale"])
def test_decoder_sessions_from_two_threads(workdir, llama_kv, kind, mode):
    # separate: two instances decode at once; shared: two sessions of one instance, no lock, the
    # overlapping calls refused (ERR_BUSY) and retried. Tokens must equal a one-thread run's, and
    # stale: calls on destroyed sessions and on sessions of a destroyed instance are refused;
    # under the sanitizers the library's own executor and runtime are instrumented too.
    lib = llama_kv[1] if kind == "plain" else _sanitized(workdir, "llama_kv", kind)
    exe = workdir / f"session_threads_{kind}"
    if not exe.exists():
        _gcc(exe, SESSION_DRIVER, lib, DRIVER_FLAGS + SANITIZER_FLAGS[kind], ["-DQC_NAME=llama_kv", "-DQC_UP=LLAMA_KV"])
    out = _run(exe, mode, 16, timeout=600).stdout
    assert out.rstrip().endswith("OK"), out
    if mode == "stale":    # calls on destroyed sessions and instances: refused, ASan sees no use after free
        return
    refs = [line.split()[2:] for line in out.splitlines() if line.startswith("REF ")]
    assert len(refs) == 2 and all(len(r) == 16 for r in refs) and refs[0] != refs[1], out
    if mode == "separate":
        assert "refused 0\n" in out, out


# --------------------------------------------------------------------------- options


def test_num_threads_one_and_two_are_bitwise_identical(driver, llama_kv):
    # bitwise, not merely close: the MLP in C over 200 inputs, the decoder through the loader
    assert _run(driver[1], "options").stdout.strip() == "OK"
    one, two = qcompile.load(llama_kv[1], num_threads=1), qcompile.load(llama_kv[1], num_threads=2)
    rng = np.random.default_rng(0)
    for batch, past, seq in ((1, 0, 5), (2, 3, 4), (2, 20, 12)):
        feeds = {"input_ids": rng.integers(0, 256, (batch, seq)).astype(np.int64)}
        for i in range(2):
            for kind in ("key", "value"):
                feeds[f"past_{kind}_{i}"] = rng.standard_normal((batch, 2, past, 16)).astype(np.float32)
        a, b = one(**feeds), two(**feeds)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.parametrize("env, option, threads", [
    ("1", 0, 1),      # $QCOMPILE_NUM_THREADS when the option is <= 0
    ("3", 0, 3),
    ("3", -1, 3),
    ("1", 2, 2),      # an explicit option wins over the environment
    (None, 1, 1),
    ("junk", 2, 2),
])
def test_qcompile_num_threads_env(plain_driver, env, option, threads):
    # the pool's threads exist from create on: the process's thread count shows its size (no
    # sanitizer here: ThreadSanitizer adds a thread of its own)
    out = _run(plain_driver, "threads", option, env={"QCOMPILE_NUM_THREADS": env} if env else {}).stdout
    assert f"threads {threads}\nOK" in out, out


# --------------------------------------------------------------------------- CPU features


def test_cpu_feature_refusal(workdir, mlp, monkeypatch):
    base = PRESETS["x86_64-v3"]
    preset = dataclasses.replace(base, name="test-unreal-cpu",
                                 cpu_features=base.cpu_features + ("not_a_real_feature",))
    monkeypatch.setitem(PRESETS, preset.name, preset)
    # named "mlp" too, so the C driver compiles against it unchanged
    _, lib = _build(workdir, "mlp", None, out="unreal", target=preset.name, name="mlp", dim_bounds={"batch": 4})
    assert lib.parent.name == "unreal"

    with pytest.raises(ArtifactError) as info:
        qcompile.load(lib)
    assert info.value.status == 7
    assert "not_a_real_feature" in str(info.value) and "lacks" in str(info.value)

    exe = _gcc(workdir / "capi_misuse_unreal", DRIVER, lib, DRIVER_FLAGS)
    out = _run(exe, "cpu").stdout
    assert "create: status 7: " in out and "not_a_real_feature" in out and out.rstrip().endswith("OK"), out
    # the well-built library of the same model still loads on this CPU
    assert qcompile.load(mlp[1]).inputs[0].name == "x"


@pytest.mark.parametrize("kind", ["asan", "tsan"])
def test_sanitized_builds_say_so(workdir, mlp, kind):
    lib = _sanitized(workdir, "mlp", kind)
    manifest = json.loads(lib.with_suffix(".manifest.json").read_text())
    assert manifest["target"]["sanitize"] == SANITIZE[kind]
    assert not manifest["self_test"]["verified"] and f"-fsanitize={SANITIZE[kind]}" in manifest["self_test"]["why_not"]
    needed = subprocess.run(["readelf", "-d", str(lib)], capture_output=True, text=True).stdout
    assert ("libtsan" if kind == "tsan" else "libasan") in needed


def test_sanitize_is_refused_for_a_gpu_target(workdir, mlp):
    with pytest.raises(QCompileError, match=r"--sanitize thread instruments the C executor of CPU libraries; "
                                            r"target cuda runs on a GPU"):
        build(mlp[0], BuildOptions(out_dir=workdir / "never", target="cuda", sanitize="thread"))
    assert not (workdir / "never").exists()
