"""assign_precision: policies, plan files, and the errors that must come before compiling."""

from __future__ import annotations

import pytest

from qcompile.frontend import from_proto
from qcompile.passes import run_pipeline
from qcompile.passes.assign_precision import (ATTR, PrecisionConfig, PrecisionError, assign, linear_layers,
                                              load_plan, table)
from qcompile.zoo import LlamaConfig, make_llama


@pytest.fixture
def llama():
    graph, _ = run_pipeline(from_proto(make_llama(LlamaConfig(hidden_size=128, intermediate_size=256))))
    return graph


def test_linear_layers_and_roles(llama):
    roles = {}
    for node, role in linear_layers(llama):
        roles.setdefault(role, []).append(node.name)
    assert len(roles["embedding"]) == 1
    assert roles["lm_head"] == ["lm_head/MatMul"]
    assert len(roles["linear"]) == 2 * 7          # q k v o gate up down per layer


def test_mixed_policy(llama):
    rows = assign(llama, PrecisionConfig("mixed"))
    formats = {role: {fmt for _, r, fmt, _ in rows if r == role} for role in ("embedding", "lm_head", "linear")}
    assert formats == {"embedding": {"bf16"}, "lm_head": {"bf16"}, "linear": {"int4-g128"}}
    rows = assign(llama, PrecisionConfig("mixed", middle="ternary"))
    assert {fmt for _, r, fmt, _ in rows if r == "linear"} == {"ternary"}
    assert "int4" not in table(rows) and "policy mixed" in table(rows)


def test_plan_overrides_win(llama, tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text('[layers]\n"*mlp/MatMul_2" = "int8"\n"lm_head/*" = "fp32"\n')
    rows = assign(llama, PrecisionConfig("mixed", overrides=load_plan(plan)))
    by_name = {name: (fmt, why) for name, _, fmt, why in rows}
    assert by_name["lm_head/MatMul"] == ("fp32", "plan 'lm_head/*'")
    down = [name for name in by_name if name.endswith("mlp/MatMul_2")]
    assert down and all(by_name[n][0] == "int8" for n in down)
    node = next(n for n in llama.nodes if n.name == down[0])
    assert node.attrs[ATTR] == "int8"


def test_plan_naming_no_layer_is_an_error(llama, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text('{"*attn*/Matmul": "int8"}')
    with pytest.raises(PrecisionError, match=r"'\*attn\*/Matmul' match no linear layer"):
        assign(llama, PrecisionConfig("mixed", overrides=load_plan(plan)))


@pytest.mark.parametrize("kwargs, message", [
    ({"policy": "int3"}, "unknown precision policy 'int3'"),
    ({"policy": "mixed", "overrides": {"lm_head/*": "fp12"}}, "unknown format 'fp12'"),
    ({"policy": "int4", "group_size": 48}, "group size 48 is not one of"),
    ({"policy": "mixed", "middle": "int8"}, "--middle must be int4 or ternary"),
])
def test_bad_configurations(kwargs, message):
    with pytest.raises(PrecisionError, match=message):
        PrecisionConfig(**kwargs)


def test_group_size_must_divide_k():
    graph, _ = run_pipeline(from_proto(make_llama(LlamaConfig())))        # hidden 64
    with pytest.raises(PrecisionError, match="group size 128 does not divide K=64") as info:
        assign(graph, PrecisionConfig("int4", group_size=128))           # an explicit size is kept
    assert info.value.node
    assign(graph, PrecisionConfig("int4", group_size=32))


def test_default_group_size_adapts_to_each_layer():
    """SmolLM2's hidden size 576 is 4.5 x 128: by default such layers take g64 (or g32), and say so."""
    graph, _ = run_pipeline(from_proto(make_llama(LlamaConfig(hidden_size=96, intermediate_size=128,
                                                              num_heads=3, num_kv_heads=1))))
    rows = {name: (fmt, why) for name, _, fmt, why in assign(graph, PrecisionConfig("mixed"))}
    fmts = {fmt for fmt, _ in rows.values()}
    assert {"int4-g32", "int4-g128", "bf16"} <= fmts, fmts      # K=96 -> g32; K=128 (down_proj) -> g128
    assert all("K=96" in why for fmt, why in rows.values() if fmt == "int4-g32")
    odd, _ = run_pipeline(from_proto(make_llama(LlamaConfig(hidden_size=72, intermediate_size=128,
                                                            num_heads=2, num_kv_heads=1))))
    with pytest.raises(PrecisionError, match="group size 128 does not divide K=72"):
        assign(odd, PrecisionConfig("int4"))


def test_unreadable_plan(tmp_path):
    bad = tmp_path / "plan.toml"
    bad.write_text("layers = [1, 2")
    with pytest.raises(PrecisionError, match="does not parse"):
        load_plan(bad)
    with pytest.raises(PrecisionError, match="cannot read plan file"):
        load_plan(tmp_path / "missing.toml")


def test_build_applies_the_policy_and_writes_the_plan(tmp_path):
    """bf16 and mixed build; a plan naming no layer stops the build before anything is written."""
    import json

    import onnx

    from qcompile.build import BuildOptions, build
    path = tmp_path / "llama.onnx"
    onnx.save(make_llama(LlamaConfig()), str(path))
    result = build(path, BuildOptions(out_dir=tmp_path / "bf16", precision="bf16", max_seq_len=16))
    plan = json.loads((tmp_path / "bf16" / "llama.plan.json").read_text())
    assert plan["layers"] and set(plan["layers"].values()) == {"bf16"}
    assert set(plan["why"]) == set(plan["layers"]) and set(plan["why"].values()) == {"policy bf16"}
    assert json.loads(result.manifest.read_text())["precision"]["policy"] == "bf16"
    result = build(path, BuildOptions(out_dir=tmp_path / "mixed", precision="mixed", group_size=32, max_seq_len=16))
    manifest = json.loads(result.manifest.read_text())
    assert len(manifest["quantized_layers"]) == 2 * 7 and manifest["quantized_layers"][0]["layout"] == "dot4-16x4"
    bad_plan = tmp_path / "plan.toml"
    bad_plan.write_text('"nothing/*" = "int8"\n')
    with pytest.raises(PrecisionError, match="match no linear layer"):
        build(path, BuildOptions(out_dir=tmp_path / "x", precision="mixed", plan=bad_plan))
