"""assign_precision: choose a weight format for every linear layer, by policy and plan file.

A linear layer is a MatMul (or Gemm) whose right operand is a constant 2-D weight [K, N], or
a Gather whose table is a constant (an embedding). The decision is written on the node as the
attribute `qcompile.precision`; quantize_weights acts on it. Policies:

  fp32, bf16, fp16, int8, int4,     every linear layer in that format (fp16: IEEE half, which
  ternary                           GPUs load natively; bf16 keeps fp32's range)
  mixed                             embeddings and the LM head bf16, the other linear layers
                                    int4 (or ternary: middle="ternary"); norms, softmax and
                                    residuals stay fp32 (they are not linear layers). With int4,
                                    the layers whose int4 error hurts the output most are then
                                    raised to int8 within a bits budget (prepare.choose_mixed)
  auto                              like mixed, but each middle layer gets the cheapest format
                                    that keeps the measured output error within a budget
                                    (qcompile.sensitivity chooses; the result arrives as `chosen`)

A plan maps glob patterns on node names to formats and wins over the policy; a pattern that
matches no layer is an error, so a typo never silently changes nothing.
"""

from __future__ import annotations

import fnmatch
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import QCompileError
from ..ir.graph import Graph, Node

ATTR = "qcompile.precision"
POLICIES = ("fp32", "bf16", "fp16", "int8", "int4", "ternary", "mixed", "auto")
WEIGHT_FORMATS = ("fp32", "bf16", "fp16", "int8", "int4-g32", "int4-g64", "int4-g128", "int4-g32-asym", "int4-g64-asym",
                  "int4-g128-asym", "ternary", "ternary-pc")


class PrecisionError(QCompileError):
    phase = "precision"


@dataclass
class PrecisionConfig:
    policy: str = "fp32"
    middle: str = "int4"             # mixed: format family of the middle layers (int4 or ternary)
    group_size: int | None = None    # None: 128, or the largest of 64, 32 that divides a layer's K
    overrides: dict[str, str] = field(default_factory=dict)   # glob on node name -> format
    chosen: dict[str, str] = field(default_factory=dict)      # exact node name -> format (auto's, mixed's choice)
    reasons: dict[str, str] = field(default_factory=dict)     # exact node name -> why it was chosen

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise PrecisionError(f"unknown precision policy '{self.policy}'; known: {', '.join(POLICIES)}")
        if self.middle not in ("int4", "ternary"):
            raise PrecisionError(f"--middle must be int4 or ternary, got '{self.middle}'")
        if self.group_size not in (None, 32, 64, 128):
            raise PrecisionError(f"group size {self.group_size} is not one of 32, 64, 128")
        for pattern, fmt in self.overrides.items():
            if fmt not in WEIGHT_FORMATS:
                raise PrecisionError(f"plan entry '{pattern}' asks for unknown format '{fmt}'; known: "
                                     f"{', '.join(WEIGHT_FORMATS)}")


def load_plan(path: str | Path) -> dict[str, str]:
    """A plan file: TOML or JSON, a table of glob pattern -> format (optionally under [layers])."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PrecisionError(f"cannot read plan file '{path}': {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise PrecisionError(f"plan file '{path}' does not parse: {exc}") from None
    data = data.get("layers", data)
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise PrecisionError(f"plan file '{path}' must map node-name patterns to format names")
    return dict(data)


def linear_layers(g: Graph) -> list[tuple[Node, str]]:
    """(node, role) for every layer with a constant weight: role is embedding, lm_head or linear."""
    layers = []
    producers = g.producers()
    final = {producers[o].name for o in g.outputs if o in producers}
    for n in g.nodes:
        if n.domain:
            continue
        if n.op == "Gather" and g.values[n.inputs[0]].const is not None and g.values[n.inputs[0]].rank == 2:
            layers.append((n, "embedding"))
        elif n.op in ("MatMul", "Gemm") and len(n.inputs) > 1:
            w = g.values[n.inputs[1]]
            if w.const is not None and w.rank == 2 and g.values[n.inputs[0]].const is None:
                layers.append((n, "lm_head" if n.name in final or "lm_head" in n.name else "linear"))
    return layers


def _policy_format(cfg: PrecisionConfig, role: str) -> str:
    if cfg.policy in ("mixed", "auto"):
        if role in ("embedding", "lm_head"):
            return "bf16"
        return f"int4-g{cfg.group_size or 128}" if cfg.middle == "int4" else "ternary"
    if role == "embedding" and cfg.policy not in ("fp32", "bf16", "fp16"):
        return "bf16"            # gathers read rows; integer formats buy nothing there yet
    return {"int4": f"int4-g{cfg.group_size or 128}"}.get(cfg.policy, cfg.policy)


def fit_group(fmt: str, k: int) -> str:
    """An int4 format whose group divides K: g128 becomes g64 or g32 where it must (else unchanged)."""
    if not fmt.startswith("int4"):
        return fmt
    group = int(fmt.split("-g")[1].split("-")[0])
    fits = [size for size in (group, 64, 32) if size <= group and k % size == 0]
    return fmt.replace(f"-g{group}", f"-g{fits[0]}") if fits else fmt


def weight_k(g: Graph, node: Node) -> int:
    """K, the reduction length, of a linear layer's weight."""
    return g.values[node.inputs[1]].shape[1 if node.op == "Gemm" and node.attrs.get("transB") else 0]


def assign(g: Graph, cfg: PrecisionConfig, sensitivity: dict | None = None) -> list[tuple[str, str, str, str]]:
    """Annotate g; returns rows (node, role, format, why) for the per-layer table."""
    layers = linear_layers(g)
    unmatched = [p for p in cfg.overrides if not any(fnmatch.fnmatchcase(n.name, p) for n, _ in layers)]
    if unmatched:
        raise PrecisionError(f"plan pattern(s) {', '.join(repr(p) for p in unmatched)} match no linear layer",
                             hint="`qcompile build --show-plan` lists the layer names")
    rows = []
    for node, role in layers:
        fmt, why = _policy_format(cfg, role), f"policy {cfg.policy}"
        if node.name in cfg.chosen:
            fmt = cfg.chosen[node.name]
            err = (sensitivity or {}).get(node.name, {}).get(fmt)
            why = cfg.reasons.get(node.name) or (f"auto: error {err:.2e} alone" if err is not None else "as given")
        for pattern, override in cfg.overrides.items():
            if fnmatch.fnmatchcase(node.name, pattern):
                fmt, why = override, f"plan '{pattern}'"
        if fmt.startswith("int4") and role != "embedding":
            k = weight_k(g, node)
            group = int(fmt.split("-g")[1].split("-")[0])
            if k % group and cfg.group_size is None and why.startswith("policy"):
                fitted = fit_group(fmt, k)      # the default group size adapts; an explicit one is a promise
                if fitted != fmt:
                    group = int(fitted.split("-g")[1].split("-")[0])
                    fmt, why = fitted, f"{why}; g{group}: K={k}"
            if k % group:
                raise PrecisionError(f"group size {group} does not divide K={k} of this layer", node=node.name,
                                     op=node.op, hint="choose another group size (--group-size 32/64) or keep "
                                                      "the layer int8/bf16 (--plan)")
        node.attrs[ATTR] = fmt
        rows.append((node.name, role, fmt, why))
    return rows


def table(rows) -> str:
    width = max((len(r[0]) for r in rows), default=4)
    lines = [f"{'layer':<{width}}  {'role':<9}  {'format':<14}  why"]
    lines += [f"{name:<{width}}  {role:<9}  {fmt:<14}  {why}" for name, role, fmt, why in rows]
    return "\n".join(lines)
