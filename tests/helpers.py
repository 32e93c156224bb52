"""Shared test helpers."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import onnxruntime as ort

from qcompile.ir import dims


def host_cpu_flags() -> set[str]:
    """The CPU feature flags /proc/cpuinfo lists (empty where it cannot be read)."""
    from pathlib import Path
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def ort_run(path, feeds) -> dict:
    """Run an ONNX file with onnxruntime's CPU provider; outputs by name."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def parse_outputs(stdout: str) -> dict[str, dict]:
    """run_model's result blocks: 'NAME: DTYPE [d0, d1]' / '  values: ...' / '  sum: S'."""
    assert "\nrun ok in " in stdout, stdout
    body = stdout.split("\nrun ok in ", 1)[1]
    found = {}
    for name, dtype, shape, values, total in re.findall(
            r"^(\S+): (\w+) \[([^\]]*)\]\n  values:(.*)\n  sum: (\S+)$", body, re.M):
        found[name] = {"dtype": dtype, "shape": tuple(int(d) for d in shape.split(", ") if d),
                       "values": values.split(), "sum": float(total)}
    return found


def example_feeds(model, env: dict[str, int], modulus=None):
    """What run_model fills: element i of each input is sin(i) for floats, i % K for integers."""
    feeds = {}
    for spec in model.inputs:
        shape = tuple(d if isinstance(d, int) else dims.parse(d).evaluate(env) for d in spec.shape)
        i = np.arange(int(np.prod(shape, dtype=np.int64)))
        if spec.dtype.kind == "f":
            feeds[spec.name] = np.sin(i.astype(np.float64)).astype(spec.dtype).reshape(shape)
        else:
            k = (modulus or {}).get(spec.name, 2 if spec.dtype == np.bool_ else 7)
            feeds[spec.name] = (i % k).astype(spec.dtype).reshape(shape)
    return feeds


def llama_feeds(rng, cfg, seq: int, past: int | None = None) -> dict:
    """Random token ids [1, seq] for a zoo Llama, plus random past_key_i/past_value_i caches of
    `past` positions when the model has a KV cache (past is not None)."""
    feeds = {"input_ids": rng.integers(0, cfg.vocab_size, (1, seq)).astype(np.int64)}
    for i in range(cfg.num_layers if past is not None else 0):
        for kind in ("key", "value"):
            feeds[f"past_{kind}_{i}"] = rng.standard_normal((1, cfg.num_kv_heads, past, cfg.head_dim)).astype(np.float32)
    return feeds


def quantized_graph(path, policy, plan=None, **kw):
    """The graph a `--precision policy` build quantizes (self-calibration and mixed's choice
    included), for the reference interpreter: the build's own front half."""
    from qcompile.api import load
    from qcompile.prepare import QuantOptions, prepare
    return prepare(load(path), QuantOptions(precision=policy, plan=plan, **kw)).graph


def gpu_check_feeds(name: str, model, rng):
    """The inputs tools/gpu_check.py runs on a GPU (batch 1; llama: a 7-token prompt, a step after
    5), which the GPU shims' tests run on the CPU."""
    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).resolve().parents[1] / "tools" /
                                                  "gpu_check.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool._feeds(name, model, rng)
