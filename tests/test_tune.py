"""`qcompile tune` and the schedule database: search spaces, the database's durability and choice
rules, tuning a small Llama-style decoder and building with the records, killing and resuming a
run, rejecting candidates that crash, hang or compute wrong numbers, and measuring through a TVM
RPC tracker and server over loopback."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

import qcompile
from qcompile.build import BuildOptions, build
from qcompile.tune import db as dbmod
from qcompile.tune.search import propose
from qcompile.tune.space import space_for
from qcompile.tune.tuner import TuneOptions, tune
from qcompile.zoo import LlamaConfig, make_llama

CFG = LlamaConfig()
IDS = np.array([[3, 17, 42, 5]], np.int64)
ENV = {"target": "native", "tvm_target": "{}", "device": "cpu-a", "threads": 2, "qcompile": "1", "tvm": "t"}


# ---- spaces and search ----------------------------------------------------------------------------

def test_spaces_prune_points_that_cannot_compile():
    s = space_for("qlinear", {"N": 48})                  # 48 = 3 x 16: only one-subtile panels
    assert s.points() == [{"tiles": 1}] and s.default() == {"tiles": 1}
    s = space_for("qlinear", {"N": 576})
    assert s.default() == {"tiles": 4} and len(s.points()) == 3
    g = space_for("gemm", {"K": 6, "panel": 16})        # k unroll must divide K
    assert {p["ku"] for p in g.points()} == {1, 2}
    assert not g.contains({"ku": 4}) and not g.contains({"bogus": 1})
    inj = space_for("injective", {"inner": 576, "dynamic_inner": False})
    # on the vector-rows path the chunk is unused: no two points that compile the same code
    assert all(p["chunk"] == 1024 for p in inj.points() if 576 % p["vector"] == 0)


def test_search_is_the_grid_when_it_fits_and_stays_in_the_space_when_not():
    small = space_for("qlinear", {"N": 576})
    assert propose(small, [], 8, 8, random.Random(0)) == small.points()
    big = space_for("gemm", {"K": 64, "panel": 16})      # 16 points
    rng, measured = random.Random(0), []
    while batch := propose(big, measured, 10, 2, rng):
        for p in batch:
            assert big.contains(p) and p not in [m for m, _ in measured]
            measured.append((p, float(p["ku"] + p["vector"])))
    assert len(measured) == 10 and measured[0][0] == big.default()


# ---- the database ---------------------------------------------------------------------------------

def _rec(workload="qlinear:int4:g64:K576:N1536:x[batch,seq]", params=None, t=10.0, status="ok", **kw):
    r = {"workload": workload, "cls": workload.rsplit(":", 3)[0] if workload.startswith("qlinear") else "c",
         "dims": [576, 1536], "family": "qlinear", "params": params or {"tiles": 2}, "status": status,
         "scenario": "decode batch=1 past=255 seq=1", **ENV, **kw}
    if status == "ok":
        r["time_us"] = t
    return r


def test_database_skips_corrupt_lines_and_appends_after_a_cut_line(tmp_path):
    path = tmp_path / "native" / "cpu-a.jsonl"
    path.parent.mkdir()
    good = [_rec(t=5.0), _rec(params={"tiles": 1}, t=7.0)]
    path.write_text(json.dumps(good[0]) + "\n" + "not json at all\n" + json.dumps({"workload": "x"}) + "\n"
                    + json.dumps(good[1]) + "\n" + json.dumps(_rec(t=3.0))[:40])   # a run killed mid-write
    db = dbmod.Database.open(path)
    assert [r["time_us"] for r in db.records] == [5.0, 7.0]
    assert [int(w[len(str(path)) + 1:].split(":")[0]) for w in db.warnings] == [2, 3, 5]
    db.append(_rec(params={"tiles": 4}, t=4.0))
    again = dbmod.Database.open(path)
    assert [r["time_us"] for r in again.records] == [5.0, 7.0, 4.0] and len(again.warnings) == 3


def test_choice_prefers_exact_then_other_version_then_nearest_then_default(tmp_path):
    space = space_for("qlinear", {"N": 1536})
    key, cls = "qlinear:int4:g64:K576:N1536:x[batch,seq]", "qlinear:int4:g64"
    db = dbmod.Database(tmp_path / "x.jsonl")
    db.records = [_rec(params={"tiles": 1}, t=9.0), _rec(params={"tiles": 2}, t=5.0),
                  _rec(params={"tiles": 4}, t=1.0, status="wrong"),             # never chosen
                  _rec(params={"tiles": 4}, t=0.5, device="cpu-b"),             # another machine
                  _rec(params={"tiles": 1}, t=0.2, scenario="one-call batch=1 seq=64")]   # prefill: not comparable
    c = db.choose(key, cls, [576, 1536], space, ENV)
    assert (c.source, c.params) == ("tuned", {"tiles": 2})
    c = db.choose(key, cls, [576, 1536], space, dict(ENV, qcompile="2"))
    assert (c.source, c.params) == ("tuned-other-version", {"tiles": 2})
    other = "qlinear:int4:g64:K576:N1024:x[batch,seq]"
    c = db.choose(other, cls, [576, 1024], space_for("qlinear", {"N": 1024}), ENV)
    assert (c.source, c.params) == ("nearest", {"tiles": 2})
    c = db.choose(other, "qlinear:int8:g576", [576, 1024], space_for("qlinear", {"N": 1024}), ENV)
    assert (c.source, c.params, c.record) == ("default", {"tiles": 4}, None)
    c = db.choose(other, cls, [576, 48], space_for("qlinear", {"N": 48}), ENV)   # tiles 2 cannot pack N=48
    assert (c.source, c.params) == ("nearest", {"tiles": 1})


# ---- tuning a model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "llama_kv.onnx"
    onnx.save(make_llama(CFG, with_kv_cache=True), str(path))
    return path


def _opts(root: Path, **kw) -> BuildOptions:
    return BuildOptions(precision="mixed", group_size=32, max_seq_len=16, schedules=root, **kw)


def _feeds(lib):
    m = qcompile.load(lib)
    feeds = {"input_ids": IDS}
    for spec in m.inputs:
        if spec.name.startswith("past"):
            feeds[spec.name] = np.random.default_rng(1).standard_normal((1, CFG.num_kv_heads, 3, CFG.head_dim)) \
                .astype(np.float32)
    return m(**feeds)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_tuned_build_uses_the_records_and_computes_the_same(model, tmp_path):
    root = tmp_path / "schedules"
    result = tune(model, _opts(root), TuneOptions(trials=3, only=["qlinear", "gemm1", "Sigmoid", "attention"]),
                  say=lambda s: None, progress=False)
    records = _lines(result.database)
    assert {r["status"] for r in records} == {"ok"} and len(records) >= 8
    tuned = {r["workload"] for r in records}
    assert any(k.startswith("qlinear") for k in tuned) and any(k.startswith("gemm1") for k in tuned)
    # a different best than the default, by hand, for one layer: the build must follow the record
    qkey = next(k for k in sorted(tuned) if k.startswith("qlinear") and ":N64:" in k)
    forced = dict(next(r for r in records if r["workload"] == qkey), params={"tiles": 1}, time_us=1e-3)
    dbmod.Database(result.database).append(forced)

    said = []
    lib_t = build(model, _opts(root, out_dir=tmp_path / "tuned"), lambda phase, d: said.append(d)).library
    lib_d = build(model, _opts(root, out_dir=tmp_path / "plain", use_tuned=False)).library
    manifest = json.loads((tmp_path / "tuned" / "llama_kv.manifest.json").read_text())
    by_key = {k["tuning"]["workload"]: k for k in manifest["kernels"] if k["tuning"]}
    for key in tuned:
        assert by_key[key]["tuning"]["source"] == "tuned", key
    assert by_key[qkey]["tuning"]["chosen"] == {"tiles": 1}
    layers = [q for q in manifest["quantized_layers"] if q["tiles"] == 1]
    assert layers, "the packed layout follows the tuned panel width"
    assert any("tuned (" in line for line in said)
    plain = json.loads((tmp_path / "plain" / "llama_kv.manifest.json").read_text())
    assert {k["tuning"]["source"] for k in plain["kernels"] if k["tuning"]} == {"default"}
    got, want = _feeds(lib_t), _feeds(lib_d)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_killed_run_resumes_without_losing_or_repeating_records(model, tmp_path):
    root = tmp_path / "schedules"
    cmd = [sys.executable, "-m", "qcompile", "tune", str(model), "--precision", "mixed", "--group-size", "32",
           "--schedules", str(root), "--trials", "6", "--no-progress", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    files = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        files = list(root.rglob("*.jsonl"))
        if files and len(files[0].read_text().splitlines()) >= 4:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = files[0].read_text()
    kept = [x for x in before.splitlines() if x.strip()]
    parsed = []
    for line in kept:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pass                              # at most the line being written when it died
    assert len(parsed) >= len(kept) - 1 >= 3
    result = tune(model, _opts(root), TuneOptions(trials=6, resume=True, workers=1), say=lambda s: None,
                  progress=False)
    after = result.database.read_text()
    assert after.startswith(before.rstrip("\n").rsplit("\n", 1)[0])      # nothing finished is lost
    records = dbmod.Database.open(result.database).records
    seen = [(r["workload"], json.dumps(r["params"], sort_keys=True)) for r in records]
    assert len(seen) == len(set(seen)), "a resumed run measured a candidate again"
    for w in result.workloads:
        assert w.tried == min(6, len(space_of(records, w.key).points()))


def space_of(records, key):
    r = next(r for r in records if r["workload"] == key)
    return space_for(r["family"], r["shape"])


def test_candidates_that_crash_hang_or_compute_wrong_numbers_are_rejected(tmp_path):
    from tvm import te, tirx

    from qcompile.artifact import toolchain
    from qcompile.targets.presets import get_preset
    from qcompile.targets.tvm.host import resolve
    from qcompile.targets.tvm.kernels import Kernel
    from qcompile.targets.tvm.tuning import Workload
    from qcompile.tune import env as envmod
    from qcompile.tune.tuner import Session, run_session

    def kernel(kind):
        x = te.placeholder((4096,), "float32", name="in0")
        if kind in ("good", "wrong"):
            y = te.compute((4096,), lambda i: x[i] * (2.0 if kind == "good" else 3.0), name="y")
        else:
            call = ("abort", []) if kind == "crash" else ("sleep", [tirx.const(60, "int32")])
            y = te.extern((4096,), [x], lambda ins, outs: tirx.Evaluate(tirx.call_extern("int32", call[0], *call[1])),
                          dtype="float32", name="y")
        return Kernel("k_demo", te.create_prim_func([x, y]).with_attr("global_symbol", "k_demo"), "injective", [])

    faults = {(8, 1024, 1): "wrong", (32, 1024, 1): "crash", (16, 1024, 0): "hang"}

    class Faulty(Workload):
        def kernel_for(self, params):
            return kernel(faults.get((params["vector"], params["chunk"], params["parallel"]), "good"))

    shape = {"inner": 0, "dynamic_inner": False}
    w = Faulty("injective:demo", "injective:demo", [4096], "injective", shape, "k_demo", 1,
               [{"shape": [4096], "dtype": "float32"}] * 2, 32768, 0, kernel("good"), outputs=[1])
    preset = resolve(get_preset("native"))
    env = envmod.environment(preset, "t", "demo-cpu", 2)
    database = dbmod.Database(tmp_path / "native" / "demo-cpu.jsonl")
    session = Session(preset, "decode", {}, [w], [], env, database, "local")
    said = []
    run_session(session, TuneOptions(trials=18, run_timeout=4, build_timeout=60, repeat=3, min_repeat_ms=1),
                toolchain.for_preset(preset), said.append, progress=False)
    status = {tuple(r["params"][k] for k in ("vector", "chunk", "parallel")): r["status"]
              for r in _lines(database.path)}
    assert len(status) == 18
    assert status[(8, 1024, 1)] == "wrong" and status[(32, 1024, 1)] == "run-error"
    assert status[(16, 1024, 0)] == "timeout"
    assert sum(s == "ok" for s in status.values()) == 15
    assert sum("rejected" in line for line in said) == 3
    choice = dbmod.Database.open(database.path).choose(w.key, w.cls, w.dims, w.space, env)
    assert tuple(choice.params[k] for k in ("vector", "chunk", "parallel")) not in faults


def test_remote_runners_give_the_same_records_as_local(model, tmp_path):
    """TVM's RPC tracker and server over loopback, and the C bench program behind an ssh command
    (here a stand-in that runs the script locally, as `ssh HOST script` would run it remotely)."""
    from tvm.rpc import server, tracker
    only = ["qlinear:int4:g32:K64:N128", "gemm1", "Sigmoid"]
    local = tune(model, _opts(tmp_path / "local"), TuneOptions(trials=3, only=only), say=lambda s: None,
                 progress=False)
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text('#!/bin/sh\nshift\nexec sh -c "$1"\n')      # drops the host, runs the script
    fake_ssh.chmod(0o755)
    over_ssh = tune(model, _opts(tmp_path / "ssh-db"), TuneOptions(trials=3, only=only, ssh="board",
                                                                   ssh_command=str(fake_ssh)),
                    say=lambda s: None, progress=False)
    trk = tracker.Tracker(host="127.0.0.1", port=9190, port_end=9290, silent=True)
    srv = server.Server(host="127.0.0.1", port=9300, port_end=9400, tracker_addr=("127.0.0.1", trk.port),
                        key="loopback", silent=True)
    try:
        from tvm import rpc
        deadline = time.monotonic() + 60
        while True:                           # wait until the server has registered its key
            try:
                rpc.connect_tracker("127.0.0.1", trk.port).request("loopback", priority=1, session_timeout=10)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        remote = tune(model, _opts(tmp_path / "remote"),
                      TuneOptions(trials=3, only=only, rpc=f"127.0.0.1:{trk.port}", device_key="loopback"),
                      say=lambda s: None, progress=False)
    finally:
        srv.terminate()
        trk.terminate()

    def keyed(path):
        return sorted((r["workload"], json.dumps(r["params"], sort_keys=True), r["status"]) for r in _lines(path))
    assert keyed(remote.database) == keyed(local.database) == keyed(over_ssh.database)
    assert len(keyed(local.database)) >= 6
    rec = _lines(remote.database)[0]
    assert rec["runner"].startswith("rpc:loopback@") and rec["device"] == "loopback"
    assert remote.database.parent.name == "native" and remote.database.name == "loopback.jsonl"
    assert _lines(over_ssh.database)[0]["runner"] == "ssh:board" and over_ssh.database.name == "board.jsonl"


@pytest.mark.parametrize("params", [{"vector": 16}, {"vector": 8}, {"vector": 0}, {"vector": 16, "parallel": 0}])
def test_attention_schedules_compute_softmax_attention(params):
    """Every point of the attention space (rfactor'ed q.k lanes, p.v with the head dim as the
    vector, or scalar loops) against numpy, with grouped-query heads and a run-time length."""
    import tvm
    from tvm import te, tirx

    from qcompile.targets.tvm import te_ops
    from qcompile.targets.tvm.kernels import Kernel
    from qcompile.targets.tvm.schedules import schedule

    t = tirx.Var("t", "int64")
    q = te.placeholder((1, 4, 3, 32), "float32", name="in0")
    k = te.placeholder((1, 2, t, 32), "float32", name="in1")
    v = te.placeholder((1, 2, t, 32), "float32", name="in2")

    class Node:
        attrs = {"scale": 0.17}
    out = te_ops.attention(Node, [q, k, v], [[1, 4, 3, 32]], ["float32"])[0]
    kernel = Kernel("att", te.create_prim_func([q, k, v, out]).with_attr("global_symbol", "att"), "attention", [])
    func, name = schedule(kernel, tvm.target.Target({"kind": "llvm"}), params)
    assert ("vector" in name) == bool(params["vector"]) and ("serial" in name) == (params.get("parallel") == 0)
    rng = np.random.default_rng(0)
    qa, ka, va = (rng.standard_normal(s).astype(np.float32) for s in ((1, 4, 3, 32), (1, 2, 37, 32), (1, 2, 37, 32)))
    y = tvm.runtime.tensor(np.zeros((1, 4, 3, 32), np.float32))
    tvm.compile(tvm.IRModule({"att": func}), target="llvm")["att"](*map(tvm.runtime.tensor, (qa, ka, va)), y)
    kr, vr = np.repeat(ka, 2, axis=1), np.repeat(va, 2, axis=1)
    s = qa @ kr.transpose(0, 1, 3, 2) * 0.17
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(y.numpy(), (p / p.sum(-1, keepdims=True)) @ vr, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")),
                    reason="needs the aarch64 cross compiler and qemu-user (tools/setup.sh installs both)")
def test_arm64_is_tuned_on_a_device_over_ssh_and_its_build_uses_the_records(model, tmp_path):
    """A cross target: candidates cross-compiled and linked for aarch64, shipped with qc_bench over
    an ssh command to a 'device' (qemu-aarch64 behind a stand-in ssh), checked there against the
    arm64 default, recorded under schedules/arm64/<device>.jsonl, and used by an arm64 build."""
    fake_ssh = tmp_path / "ssh"
    fake_ssh.write_text('#!/bin/sh\nshift\nexec sh -c "$(echo "$1" | sed '
                        '"s#./qc_bench#qemu-aarch64 -L /usr/aarch64-linux-gnu ./qc_bench#")"\n')
    fake_ssh.chmod(0o755)
    root = tmp_path / "schedules"
    opts = BuildOptions(target="arm64", precision="mixed", group_size=32, max_seq_len=16, schedules=root)
    result = tune(model, opts, TuneOptions(trials=2, only=["qlinear:int4:g32:K64:N128", "attention"], ssh="rk3588",
                                           ssh_command=str(fake_ssh), repeat=2, min_repeat_ms=1),
                  say=lambda s: None, progress=False)
    records = _lines(result.database)
    assert result.database == root / "arm64" / "rk3588.jsonl"
    assert {r["status"] for r in records} == {"ok"} and len(records) == 4
    assert {r["runner"] for r in records} == {"ssh:rk3588"} and "aarch64" in records[0]["tvm_target"]
    build(model, dataclasses.replace(opts, out_dir=tmp_path / "out"))
    manifest = json.loads((tmp_path / "out" / "llama_kv.manifest.json").read_text())
    sources = {k["tuning"]["workload"]: k["tuning"]["source"] for k in manifest["kernels"] if k["tuning"]}
    assert {sources[r["workload"]] for r in records} == {"tuned"}
