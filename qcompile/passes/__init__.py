"""Graph passes. Importing this package registers every pass; none of them imports TVM."""

from . import (eliminate_dead, fold_constants, fold_norms, fuse_attention, fuse_rms_norm,  # noqa: F401  (register)
               fuse_rotary, infer_shapes, rotate)
from .manager import PipelineReport, run_pipeline
from .pipeline import PIPELINES, Phase
from .registry import PASSES, get_pass, register_pass

__all__ = ["PASSES", "PIPELINES", "Phase", "PipelineReport", "get_pass", "register_pass", "run_pipeline"]
