"""Optional: the same Llama exported by the real exporter (torch.onnx, dynamo).

`make_llama` mimics the exporter by hand; this path produces the genuine
article so the frontend can be checked against what users will feed it. The HF
model is loaded with `make_llama(cfg, seed)`'s weights, so both files compute
the same function and their outputs can be compared directly.

torch/transformers are imported lazily: they are heavy and not project
dependencies.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import ModuleType

from onnx import numpy_helper

from .llama import LlamaConfig, make_llama

INSTALL_HINT = "pip install torch==2.13.0 transformers onnxscript"


def export_llama_torch(cfg: LlamaConfig, path: str | Path, seed: int = 0) -> Path:
    """Export HF LlamaForCausalLM (eager attention, no KV cache) to `path`.

    Graph: input_ids int64 [batch, seq] -> logits float32 [batch, seq, vocab],
    opset 18, batch and seq dynamic, weights inlined (no external data file).
    """
    torch, transformers = _require_torch()
    model = transformers.LlamaForCausalLM(_hf_config(transformers, cfg)).eval()
    model.load_state_dict(_zoo_state_dict(torch, cfg, seed), strict=True)

    class LogitsOnly(torch.nn.Module):
        """Drops the HF output dataclass and cache so the graph has one output."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids):  # noqa: ANN001, ANN202 (torch types are lazy)
            return self.model(input_ids=input_ids, use_cache=False).logits

    # batch 2 / seq 8 so torch.export does not specialise the dynamic dims to 1.
    example = torch.randint(0, cfg.vocab_size, (2, 8), generator=torch.Generator().manual_seed(seed))
    dynamic = torch.export.Dim.DYNAMIC
    path = Path(path)
    torch.onnx.export(
        LogitsOnly().eval(),
        (example,),
        str(path),
        dynamo=True,
        opset_version=18,
        input_names=["input_ids"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": {0: dynamic, 1: dynamic}},
        external_data=False,
    )
    return path


def _require_torch() -> tuple[ModuleType, ModuleType]:
    try:
        import torch
        import transformers
        import onnxscript  # noqa: F401  (needed by the dynamo exporter)
    except ImportError as exc:
        raise RuntimeError(
            f"export_llama_torch needs PyTorch, transformers and onnxscript ({exc.name} is missing); "
            f"install them with: {INSTALL_HINT}"
        ) from exc
    return torch, transformers


def _hf_config(transformers: ModuleType, cfg: LlamaConfig) -> object:
    kwargs: dict[str, object] = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.max_position,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        use_cache=False,
        # Eager attention decomposes into MatMul/Softmax like make_llama; SDPA
        # may export as a fused op instead.
        attn_implementation="eager",
    )
    # transformers 5 moved rope_theta into rope_parameters.
    if "rope_parameters" in inspect.signature(transformers.LlamaConfig.__init__).parameters:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    else:
        kwargs["rope_theta"] = cfg.rope_theta
    return transformers.LlamaConfig(**kwargs)


def _zoo_state_dict(torch: ModuleType, cfg: LlamaConfig, seed: int) -> dict[str, object]:
    """make_llama's initializers as an HF state dict (Linear weights back to [out, in])."""
    state = {}
    for tensor in make_llama(cfg, seed).graph.initializer:
        if tensor.name == "model.rotary_emb.inv_freq":  # HF recomputes it (non-persistent buffer)
            continue
        array = numpy_helper.to_array(tensor)
        if tensor.name.endswith("_proj.weight") or tensor.name == "lm_head.weight":
            array = array.T
        state[tensor.name] = torch.from_numpy(array.copy())
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    return state
