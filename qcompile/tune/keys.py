"""Workload names shared by the build (which looks them up) and the tuner (which records them)."""

from __future__ import annotations


def qlinear(family: str, group: int, k: int, n: int, lead) -> tuple[str, str, list[int]]:
    """(key, class, dims) of a quantized linear layer: its panel width is chosen before its kernel
    exists, from the layer's format and shape alone."""
    lead = ",".join(str(d) for d in lead)
    return f"qlinear:{family}:g{group}:K{k}:N{n}:x[{lead}]", f"qlinear:{family}:g{group}", [k, n]
