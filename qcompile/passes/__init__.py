"""Graph passes. Importing this package registers every pass; none of them imports TVM."""

from . import (eliminate_dead, fold_constants, fold_norms, fold_scales, fuse_attention, fuse_rms_norm,  # noqa: F401
               fuse_rotary, import_quantized, infer_shapes, rotate)
from .manager import PipelineReport, run_pipeline
from .pipeline import PIPELINES, Phase
from .registry import PASSES, get_pass, register_pass

__all__ = ["PASSES", "PIPELINES", "Phase", "PipelineReport", "get_pass", "register_pass", "run_pipeline"]
