"""Named pipelines, declared once: each is a list of phases, each phase a list of passes.

Targets and precisions pick a pipeline by name; nothing here branches on a target.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    name: str
    passes: tuple[str, ...]


PIPELINES: dict[str, tuple[Phase, ...]] = {
    # what every build starts with: settle shapes, fold what is known, drop what is unused
    "simplify": (
        Phase("simplify", ("infer_shapes", "fold_constants", "eliminate_dead", "infer_shapes")),
    ),
    "default": (
        # import_quantized first: fold_constants would turn a weight's DequantizeLinear into floats
        Phase("simplify", ("infer_shapes", "import_quantized", "fold_constants", "eliminate_dead", "infer_shapes")),
        # recognize what exporters decompose, so kernels see whole operations
        Phase("canonicalize", ("fuse_rms_norm", "fuse_rotary", "fuse_attention", "fold_scales", "eliminate_dead",
                               "infer_shapes")),
    ),
}


def get_pipeline(name: str) -> tuple[Phase, ...]:
    try:
        return PIPELINES[name]
    except KeyError:
        raise KeyError(f"unknown pipeline '{name}'; known: {', '.join(PIPELINES)}") from None
