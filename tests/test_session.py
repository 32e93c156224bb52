"""Decoder sessions: the library keeps the KV cache; prefill + decode must equal running the whole
sequence at once, from Python, from C and through `qcompile generate`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest

import qcompile
from qcompile.artifact.loader import ArtifactError
from qcompile.artifact.decoder import NotADecoder, detect
from qcompile.build import BuildOptions, build
from qcompile.cli import main
from qcompile.frontend import load
from qcompile.generate import Sampling, generate, sample
from qcompile.zoo import LlamaConfig, make_llama, make_mlp

from .helpers import ort_run

ROOT = Path(__file__).resolve().parents[1]
CFG = LlamaConfig()
IDS = np.array([3, 17, 42, 5, 99, 7, 1, 250, 64, 12, 9, 200], np.int64)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("session")


@pytest.fixture(scope="module")
def files(workdir):
    paths = {"kv": workdir / "llama_kv.onnx", "plain": workdir / "llama.onnx", "mlp": workdir / "mlp.onnx"}
    onnx.save(make_llama(CFG, with_kv_cache=True), str(paths["kv"]))
    onnx.save(make_llama(CFG), str(paths["plain"]))
    onnx.save(make_mlp(), str(paths["mlp"]))
    return paths


def built(workdir, files, precision, **kw):
    out = workdir / f"kv-{precision}-{'-'.join(f'{k}{v}' for k, v in sorted(kw.get('dim_bounds', {}).items()))}"
    if not (out / "llama_kv.so").exists():
        build(files["kv"], BuildOptions(out_dir=out, precision=precision, group_size=32, name="llama_kv",
                                        max_seq_len=kw.get("max_seq_len", 16), dim_bounds=kw.get("dim_bounds", {})))
    return out / "llama_kv.so"


def test_decoder_signature_is_recognized(files):
    dec = detect(load(files["kv"]))
    assert (dec.tokens, dec.logits, dec.seq, dec.past) == ("input_ids", "logits", "seq", "past")
    assert [(c.past, c.present, c.axis) for c in dec.caches][:2] == [("past_key_0", "present_key_0", 2),
                                                                    ("past_value_0", "present_value_0", 2)]
    assert len(dec.caches) == 2 * CFG.num_layers
    with pytest.raises(NotADecoder, match="KV-cache"):
        detect(load(files["plain"]))
    with pytest.raises(NotADecoder, match="token-id"):
        detect(load(files["mlp"]))


def full_sequence_logits(model, ids):
    feeds = {"input_ids": ids[None]}
    for spec in model.inputs:
        if spec.name.startswith("past"):
            feeds[spec.name] = np.zeros((1, CFG.num_kv_heads, 0, CFG.head_dim), np.float32)
    return model(**feeds)["logits"][0]


@pytest.mark.parametrize("precision", ["fp32", "mixed"])
def test_prefill_then_decode_equals_the_whole_sequence(workdir, files, precision):
    model = qcompile.load(built(workdir, files, precision))
    session = model.session()
    assert (session.capacity, session.position, model.vocab_size) == (16, 0, CFG.vocab_size)
    steps = [session.prefill(IDS[:5])] + [session.decode(t) for t in IDS[5:]]
    assert session.position == len(IDS)
    got = np.stack(steps)
    want = full_sequence_logits(model, IDS)[4:]
    # int8 activations are quantized per token, so cached and uncached runs do identical integer
    # work; float attention sums the same terms in the same order
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    if precision == "fp32":      # and the same function as the uncached ONNX model in onnxruntime
        ref = ort_run(files["plain"], {"input_ids": IDS[None]})["logits"][0][4:]
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    session.reset()
    np.testing.assert_array_equal(session.prefill(IDS[:5]), steps[0])


def test_long_prompts_are_prefilled_in_chunks(workdir, files):
    """seq bound 4: a 10-token prompt runs as 4 + 4 + 2 tokens, and must equal one decode per token."""
    model = qcompile.load(built(workdir, files, "mixed", dim_bounds={"seq": 4}))
    a, b = model.session(), model.session()
    chunked = a.prefill(IDS[:10])
    for t in IDS[:10]:
        single = b.decode(t)
    np.testing.assert_allclose(chunked, single, rtol=0, atol=1e-5 * np.abs(single).max())
    assert a.position == b.position == 10


def test_session_errors_leave_the_context_intact(workdir, files):
    lib = built(workdir, files, "mixed")
    record = json.loads(lib.with_name("llama_kv.manifest.json").read_text())["session"]
    assert (record["tokens"], record["past"], record["kv_quant"]) == ("input_ids", "past", None)   # fp32 cache
    model = qcompile.load(lib)
    session = model.session(max_context=8)
    assert session.capacity == 8
    session.prefill(IDS[:6])
    with pytest.raises(ArtifactError, match="3 more tokens do not fit: the context holds 6 of 8"):
        session.prefill(IDS[:3])
    with pytest.raises(ArtifactError, match="outside the vocabulary"):
        session.decode(CFG.vocab_size)
    with pytest.raises(ArtifactError, match="no tokens"):
        session.prefill([])
    assert session.position == 6
    nxt = session.decode(IDS[6])           # the context survived the failed calls
    np.testing.assert_allclose(nxt, full_sequence_logits(model, IDS[:7])[6], rtol=0, atol=1e-5 * np.abs(nxt).max())
    with pytest.raises(ArtifactError, match="built for at most 16"):
        model.session(max_context=17)
    with pytest.raises(ArtifactError, match="no session API"):
        build(files["mlp"], BuildOptions(out_dir=workdir / "mlp", dim_bounds={"batch": 2}))
        qcompile.load(workdir / "mlp" / "mlp.so").session()
    assert '"available": false' in (workdir / "mlp" / "mlp.manifest.json").read_text()


def test_sampling_policies():
    logits = np.array([1.0, 3.0, 2.0, -1.0], np.float32)
    rng = np.random.default_rng(0)
    assert sample(logits, Sampling(), rng) == 1
    assert {sample(logits, Sampling(1.0, top_k=1), rng) for _ in range(20)} == {1}
    assert {sample(logits, Sampling(1.0, top_k=2), rng) for _ in range(200)} == {1, 2}
    # softmax mass: 0.665, 0.245, 0.090, 0.000: top_p 0.8 keeps the first two
    assert {sample(logits, Sampling(1.0, top_p=0.8), rng) for _ in range(200)} == {1, 2}
    draws = [sample(logits, Sampling(1.0), np.random.default_rng(7)) for _ in range(3)]
    assert len(set(draws)) == 1                                   # a seed reproduces
    with pytest.raises(ValueError):
        Sampling(top_p=0.0)


def greedy_reference(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(np.argmax(full_sequence_logits(model, np.array(ids, np.int64))[-1])))
    return ids[len(prompt):]


def test_generate_command_is_greedy_decoding(workdir, files, capsys):
    lib = built(workdir, files, "mixed")
    want = greedy_reference(qcompile.load(lib), [1, 2, 3, 4], 8)
    assert main(["generate", str(lib), "--prompt-ids", "1,2,3,4", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert f"new token ids: {','.join(map(str, want))}" in out and "tok/s" in out
    assert main(["generate", str(lib), "--prompt-ids", "1,2,3,4", "--max-new-tokens", "30"]) == 0
    assert "stopped by context" in capsys.readouterr().out          # 4 + 12 fill the 16 positions
    stop = next(i for i in range(1, 8) if want[i] not in want[:i])
    result = generate(qcompile.load(lib).session(), [1, 2, 3, 4], 8, eos=[want[stop]])
    assert result.tokens == want[:stop + 1] and result.stopped == "eos"
    assert main(["generate", str(lib), "--prompt-ids", "1,two"]) == 2
    assert main(["generate", str(lib), "--prompt", "hello"]) == 2      # text needs --tokenizer


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler")
def test_generate_from_c_matches_python(workdir, files):
    lib = built(workdir, files, "mixed")
    exe = workdir / "generate"
    cmd = ["gcc", "-O2", "-std=c11", "-Wall", "-Werror", "-DQC_NAME=llama_kv", str(ROOT / "examples" / "generate.c"),
           f"-I{lib.parent}", f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}", "-lm", "-o", str(exe)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([str(exe), "8", "1", "2", "3", "4"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    want = generate(qcompile.load(lib).session(), [1, 2, 3, 4], 8).tokens
    assert proc.stdout.strip() == ",".join(map(str, want))
