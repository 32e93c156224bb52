"""Corrupted models for the frontend and the build's first half: whatever bytes arrive, qcompile
answers with a QCompileError (or builds), never another exception and never a hang.

A case is a bundled model's bytes with a few mutations (bit flips, overwritten bytes, an
insertion, a truncation, or random bytes outright), fed to the build's front half (load, checks,
passes, quantization, plan, TIR kernels) at a precision the case picks. `tests/test_fuzz.py` runs a
fixed budget of them; `tools/fuzz.py` runs campaigns of any length and lists what escaped.
"""

from __future__ import annotations

import contextlib
import random
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from ..errors import QCompileError

MUTATIONS = ("flip", "overwrite", "insert", "truncate", "random", "dim")
# "dim": one declared dim of an input, output, value_info or initializer set to one of these
ODD_DIMS = (0, 1, 3, -1, -7, 2**31 - 1, 2**31, 2**40, 10**12, 2**62, 2**63 - 1)
PRECISIONS = ("fp32", "int8", "mixed")


def seed_models() -> list[bytes]:
    """The models mutations start from: small enough that a case takes well under a second."""
    from ..zoo import LlamaConfig, make_bert, make_llama, make_mlp
    tiny = LlamaConfig(hidden_size=32, intermediate_size=64, vocab_size=64, num_layers=1)
    return [make_mlp().SerializeToString(), make_llama(tiny).SerializeToString(),
            make_llama(tiny, with_kv_cache=True).SerializeToString(), make_bert().SerializeToString()]


def mutate(data: bytes, rng: random.Random, count: int) -> tuple[bytes, list[str]]:
    out, done = bytearray(data), []
    for _ in range(count):
        kind = rng.choice(MUTATIONS)
        at = rng.randrange(max(len(out), 1))
        if kind == "flip" and out:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == "overwrite" and out:
            out[at] = rng.randrange(256)
        elif kind == "insert":
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif kind == "truncate":
            out = out[:at]
        elif kind == "random":
            out = bytearray(rng.randrange(256) for _ in range(rng.randrange(1, 512)))
        elif kind == "dim":
            out, at = _odd_dim(out, rng)
        done.append(f"{kind}@{at}")
    return bytes(out), done


def _odd_dim(data: bytearray, rng: random.Random) -> tuple[bytearray, int | str]:
    """Structured: the model parsed, one dim changed to a value from ODD_DIMS, serialized again (a
    file that no longer parses is left as it is)."""
    import onnx
    try:
        model = onnx.load_from_string(bytes(data))
    except Exception:      # protobuf's DecodeError and friends: bytes already mangled
        return data, "unparsed"
    g = model.graph
    shapes = [v.type.tensor_type.shape for v in (*g.input, *g.output, *g.value_info) if v.type.HasField("tensor_type")]
    dims = [d for shape in shapes for d in shape.dim] + [t for t in g.initializer if t.dims]
    if not dims:
        return data, "none"
    target, value = rng.choice(dims), rng.choice(ODD_DIMS)
    if isinstance(target, onnx.TensorProto):
        i = rng.randrange(len(target.dims))
        target.dims[i] = value
        where = f"{target.name}.dims[{i}]={value}"
    else:
        target.dim_value = value     # a dim_param becomes a fixed dim
        where = f"dim={value}"
    try:
        return bytearray(model.SerializeToString()), where
    except Exception:      # a value protobuf refuses to encode
        return data, "unencodable"


class Hang(Exception):
    pass


@dataclass
class Outcome:
    kind: str            # built | refused | escaped | hang
    detail: str          # the error's first line, or where an unexpected exception came from
    seconds: float


def run_case(data: bytes, precision: str, folder: Path, timeout: int = 0) -> Outcome:
    """The build's front half on `data`, for the x86-64 AVX2 preset; a case still running after
    `timeout` seconds (0: no limit; main thread only) is a hang."""
    from ..build import BuildOptions, front
    from ..targets.presets import get_preset
    path = folder / "case.onnx"
    path.write_bytes(data)
    start = time.perf_counter()
    try:
        with time_limit(timeout):
            front(path, BuildOptions(precision=precision, max_seq_len=16), get_preset("x86_64-v3"), "m",
                  lambda phase, detail: None)
        return Outcome("built", "", time.perf_counter() - start)
    except QCompileError as exc:
        return Outcome("refused", f"[{exc.phase}] {str(exc.message).splitlines()[0][:160]}", time.perf_counter() - start)
    except Hang:
        return Outcome("hang", f"still running after {timeout} s", time.perf_counter() - start)
    except Exception as exc:     # what fuzzing is for: report it with where it came from
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "qcompile" in f.filename] or \
            traceback.extract_tb(exc.__traceback__)
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}"
        return Outcome("escaped", f"{type(exc).__name__} at {where}: {str(exc).splitlines()[0][:160] if str(exc) else ''}",
                       time.perf_counter() - start)


@contextlib.contextmanager
def time_limit(seconds: int):
    """Raise Hang in the block after `seconds` (0: no limit). SIGALRM: main thread only."""
    if not seconds:
        yield
        return
    previous = signal.signal(signal.SIGALRM, _raise_hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _raise_hang(signum, frame):
    raise Hang()


def campaign(count: int, seed: int = 0, timeout: int = 0, on_case=None) -> list[tuple[int, Outcome, list[str]]]:
    """`count` cases from `seed`; (case index, outcome, mutations) for each. on_case(i, outcome,
    data) is called as they finish."""
    seeds, rng = seed_models(), random.Random(seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="qcompile_fuzz_") as tmp:
        for i in range(count):
            data, done = mutate(rng.choice(seeds), rng, rng.randrange(1, 4))
            outcome = run_case(data, rng.choice(PRECISIONS), Path(tmp), timeout)
            results.append((i, outcome, done))
            if on_case:
                on_case(i, outcome, data)
    return results
