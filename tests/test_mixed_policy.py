"""`--precision mixed` without data: self-calibration from random token ids, the int4 scale search
weighted by it, and the int8 layers chosen by their effect on the output within a bits budget."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest

from qcompile import self_calibration
from qcompile.api import load, replay
from qcompile.ir import interpret
from qcompile.prepare import QuantOptions, prepare
from qcompile.sensitivity import choose_within_bits, storage_bits
from qcompile.zoo.bert import BertConfig, make_bert
from qcompile.zoo.llama import LlamaConfig, make_llama
from qcompile.zoo.mlp import make_mlp

CFG = LlamaConfig()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "llama.onnx"
    onnx.save(make_llama(CFG, with_kv_cache=True), path)
    return path


def test_samples_are_seeded_token_ids_inside_the_table(llama, tmp_path):
    graph = load(llama)
    a, b = self_calibration.samples(graph), self_calibration.samples(graph)
    assert len(a) == self_calibration.TOKENS // self_calibration.WINDOW
    ids = np.concatenate([s["input_ids"].reshape(-1) for s in a])
    assert ids.min() >= 0 and ids.max() < CFG.vocab_size and len(np.unique(ids)) > CFG.vocab_size // 2
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
    interpret.run(graph, a[0])       # feeds the graph takes as they are
    onnx.save(make_bert(BertConfig()), tmp_path / "bert.onnx")
    bert = load(tmp_path / "bert.onnx")
    (sample, *_) = self_calibration.samples(bert)
    tables = self_calibration.token_inputs(bert)
    assert set(tables) <= set(sample) and all(sample[k].max() < tables[k] for k in tables)
    # no longer than its learned position table (BertConfig's), which a longer sample would overrun
    assert self_calibration.position_rows(bert) == [BertConfig().max_position]
    assert sample["input_ids"].shape[1] == min(self_calibration.WINDOW, BertConfig().max_position)
    interpret.run(bert, sample)
    onnx.save(make_mlp(), tmp_path / "mlp.onnx")
    assert self_calibration.samples(load(tmp_path / "mlp.onnx")) is None     # floats in: nothing to draw


def test_choose_within_bits_buys_the_most_error_per_bit(llama):
    graph = prepare(load(llama), QuantOptions()).graph
    from qcompile.passes.assign_precision import linear_layers
    names = [n.name for n, role in linear_layers(graph) if role == "linear"]
    low = {n: "int4-g32" for n in names}
    sens = {n: {"int4-g32": 1e-3, "int8": 1e-4} for n in names}
    sens[names[3]] = {"int4-g32": 5e-2, "int8": 1e-4}
    sens[names[5]] = {"int4-g32": 2e-2, "int8": 1e-4}
    base = storage_bits("int4-g32")
    pick, bits = choose_within_bits(graph, sens, low, "int8", base)
    assert pick == low and bits == pytest.approx(base)
    params = {n.name: int(np.prod(graph.values[n.inputs[1]].shape)) for n, _ in linear_layers(graph) if n.name in low}
    total = sum(params.values())
    # room for exactly the two most harmful layers (when they are no larger than the others)
    room = base + (8 - base) * (params[names[3]] + params[names[5]]) / total
    pick, bits = choose_within_bits(graph, sens, low, "int8", room)
    assert {n for n in pick if pick[n] == "int8"} >= {names[3]} and bits <= room + 1e-9
    raised = [n for n in names if pick[n] == "int8"]
    assert all(sens[n]["int4-g32"] >= 2e-2 or params[n] < params[names[5]] for n in raised)


def test_mixed_raises_the_layers_that_hurt_most_and_says_why(llama):
    cheap = prepare(load(llama), QuantOptions(precision="mixed", bits=4.0))
    assert cheap.self_calibration is not None and cheap.mixed["int8_layers"] == []
    rich = prepare(load(llama), QuantOptions(precision="mixed", bits=6.0))
    raised = rich.mixed["int8_layers"]
    assert raised and rich.mixed["bits"] <= 6.0
    rows = {name: (fmt, why) for name, role, fmt, why in rich.layers}
    for name in raised:
        assert rows[name][0] == "int8" and "raised to int8" in rows[name][1] and "rank" in rows[name][1]
    # greedy by error removed per added bit: among layers of one size, every raised layer gains more
    # than every layer left int4
    sens, params = rich.sensitivity, rich.params
    gain = {n: s[min(s, key=storage_bits)] - s["int8"] for n, s in sens.items()}
    for r in raised:
        for u in set(sens) - set(raised):
            if params[u] == params[r]:
                assert gain[r] >= gain[u], (r, u)
    # embedding and LM head stay bf16
    assert {fmt for name, role, fmt, why in rich.layers if role != "linear"} == {"bf16"}


def test_self_calibration_weighs_the_search_and_replays(llama, tmp_path):
    """A built mixed library records its self-calibration; replaying the manifest quantizes the
    weights bit for bit as the build did (the same random ids, the same search)."""
    from qcompile.build import BuildOptions, build
    result = build(llama, BuildOptions(out_dir=tmp_path / "out", precision="mixed", max_seq_len=32))
    manifest = json.loads(result.manifest.read_text())
    assert manifest["precision"]["self_calibration"]["tokens"] == self_calibration.TOKENS
    assert manifest["precision"]["mixed"]["bits"] <= 4.5
    plan = json.loads((tmp_path / "out" / "llama.plan.json").read_text())
    assert set(plan["why"]) == set(plan["layers"])
    graph = replay(result.library)[0]
    again = prepare(load(llama), QuantOptions(precision="mixed")).graph
    consts = {n.name: [again.values[i].const for i in n.inputs[1:]] for n in again.nodes if n.op == "QLinear"}
    replayed = {n.name: [graph.values[i].const for i in n.inputs[1:]] for n in graph.nodes if n.op == "QLinear"}
    assert consts.keys() == replayed.keys() and consts
    for name in consts:
        assert all(np.array_equal(a, b) for a, b in zip(consts[name], replayed[name])), name
    # without self-calibration the int4 scales differ (unweighted search)
    plain = prepare(load(llama), QuantOptions(precision="mixed", self_calibration=False))
    assert plain.self_calibration is None and plain.mixed is None
    int4 = [n for n in plain.graph.nodes if n.op == "QLinear" and consts[n.name][1].shape ==
            plain.graph.values[n.inputs[2]].const.shape]
    assert int4 and any(not np.array_equal(plain.graph.values[n.inputs[2]].const, consts[n.name][1]) for n in int4)


def _massive_channel_llama(path):
    """The tiny decoder with SmolLM2's trap: one residual channel 300x the rest, silenced by every
    norm's gamma (1e-4)."""
    from onnx import numpy_helper
    model = make_llama(CFG, with_kv_cache=True)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t).copy()
        if "embed" in t.name:
            a[:, 7] = 300.0 * np.abs(a).max()
        elif "layernorm" in t.name or t.name == "model.norm.weight":
            a[7] = 1e-4
        else:
            continue
        t.CopyFrom(numpy_helper.from_array(a.astype(np.float32), t.name))
    onnx.save(model, path)
    return path


def test_rotation_is_kept_where_it_helps_and_refused_where_it_hurts(llama, tmp_path):
    from qcompile.errors import QCompileError
    said = []
    prepare(load(llama), QuantOptions(precision="int4", rotate=True), lambda phase, text: said.append(text))
    kept = [t for t in said if t.startswith("--rotate kept")]
    assert kept and "KL divergence" in kept[0]
    rotated, plain = map(float, re.findall(r"(\d\.\d+e?-?\d*) (?:rotated|without)", kept[0]))
    assert rotated <= plain
    massive = _massive_channel_llama(tmp_path / "massive.onnx")
    with pytest.raises(QCompileError, match=r"--rotate makes this model's quantized outputs worse") as err:
        prepare(load(massive), QuantOptions(precision="int4", rotate=True))
    assert "--rounding gptq" in err.value.hint
    prepare(load(massive), QuantOptions(precision="int4"))          # without --rotate it builds
