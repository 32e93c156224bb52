"""Deterministic, download-free ONNX test models for the compiler.

Each generator returns an `onnx.ModelProto` (opset 18, IR 10) whose weights
depend only on its config and seed, so tests and benchmarks can rebuild the
exact same model anywhere instead of shipping binary files.
"""

from .bert import BertConfig, make_bert
from .common import count_params, op_histogram
from .llama import LlamaConfig, make_llama
from .mlp import make_mlp
from .torch_export import export_llama_torch

__all__ = [
    "BertConfig",
    "LlamaConfig",
    "count_params",
    "export_llama_torch",
    "make_bert",
    "make_llama",
    "make_mlp",
    "op_histogram",
]
