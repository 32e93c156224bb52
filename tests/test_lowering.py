"""TIR kernels from the lowering, run in-process through TVM, against the reference interpreter."""

from __future__ import annotations

import numpy as np
import tvm

from qcompile.frontend import from_proto
from qcompile.ir.interpret import run
from qcompile.passes import run_pipeline
from qcompile.targets.plan import make_plan
from qcompile.targets.presets import get_preset
from qcompile.targets.tvm.compile import schedule_all
from qcompile.targets.tvm.host import resolve
from qcompile.targets.tvm.jit import run_plan
from qcompile.targets.tvm.kernels import build_kernels
from qcompile.zoo import BertConfig, LlamaConfig, make_bert, make_llama, make_mlp

from .helpers import llama_feeds

TARGET = resolve(get_preset("native")).tvm_target     # kernels run here, so exactly this CPU
BOUNDS = {"batch": 2, "seq": 64, "past": 64}


def compile_plan(plan, prefix: str = "t"):
    """The plan's kernels, scheduled and compiled for this CPU: (kernels, module for run_plan)."""
    kernels = build_kernels(plan, prefix)
    target = tvm.target.Target(TARGET)
    scheduled, _ = schedule_all(kernels, target)
    return kernels, tvm.compile(scheduled, target=target)


def compiled(model):
    graph, _ = run_pipeline(from_proto(model))
    plan = make_plan(graph, BOUNDS)
    kernels, module = compile_plan(plan)
    return graph, plan, kernels, module


def assert_matches_reference(graph, plan, module, feeds):
    ours, ref = run_plan(plan, module, feeds), run(graph, feeds)
    for name, expected in ref.items():
        scale = max(1.0, float(np.abs(expected).max()))
        assert ours[name].shape == expected.shape
        assert float(np.abs(ours[name] - expected).max()) <= 1e-4 * scale, name


def test_mlp(rng):
    graph, plan, _, module = compiled(make_mlp())
    for batch in (1, 2):
        assert_matches_reference(graph, plan, module, {"x": rng.standard_normal((batch, 64)).astype(np.float32)})


def test_llama_several_lengths_one_build(rng):
    graph, plan, kernels, module = compiled(make_llama(LlamaConfig()))
    assert len(kernels) < len(plan.steps), "identical workloads (the two layers) share kernels"
    for batch, seq in ((1, 1), (2, 7), (1, 33)):
        assert_matches_reference(graph, plan, module, {"input_ids": rng.integers(0, 256, (batch, seq)).astype(np.int64)})


def test_llama_kv_cache(rng):
    cfg = LlamaConfig()
    graph, plan, _, module = compiled(make_llama(cfg, with_kv_cache=True))
    assert "past" in plan.symbols
    for past, seq in ((0, 3), (5, 1)):
        assert_matches_reference(graph, plan, module, llama_feeds(rng, cfg, seq, past))


def test_bert(rng):
    graph, plan, _, module = compiled(make_bert(BertConfig()))
    mask = np.ones((2, 9), np.int64)
    mask[1, 5:] = 0
    feeds = {"input_ids": rng.integers(0, 128, (2, 9)).astype(np.int64), "attention_mask": mask,
             "token_type_ids": rng.integers(0, 2, (2, 9)).astype(np.int64)}
    assert_matches_reference(graph, plan, module, feeds)


def test_arena_reuses_memory():
    graph, _ = run_pipeline(from_proto(make_llama(LlamaConfig(num_layers=4))))
    plan = make_plan(graph, BOUNDS)
    total = sum(st.max_bytes for st in plan.storage.values() if st.kind == "arena")
    assert plan.arena_bytes < total / 3
    # no two values alive at the same time overlap
    from qcompile.targets.plan import resolve
    live = {}
    for i, step in enumerate(plan.steps):
        for name in step.inputs + step.outputs:
            owner = resolve(plan, name)
            if plan.storage[owner].kind == "arena":
                live.setdefault(owner, [i, i])[1] = i
    for name in graph.outputs:
        live[resolve(plan, name)][1] = len(plan.steps)
    items = list(live.items())
    for a, (fa, la) in items:
        sa = plan.storage[a]
        for b, (fb, lb) in items:
            sb = plan.storage[b]
            if a < b and fa <= lb and fb <= la:
                assert sa.offset + sa.max_bytes <= sb.offset or sb.offset + sb.max_bytes <= sa.offset, (a, b)
