"""Reproducible builds: the same model and flags give byte-identical artifacts, whatever the
output folder and whatever the temporary build folder was called (no timestamps, paths, process
ids or random names end up in the library, its header, its manifest or, for Metal, its sources)."""

from __future__ import annotations

import hashlib
import importlib.util
import platform
import shutil
from pathlib import Path

import onnx
import pytest

from qcompile.build import BuildOptions, build
from qcompile.zoo import LlamaConfig, make_llama

CASES = {
    "x86_64 mixed": dict(target="x86_64-v3", precision="mixed", group_size=32),
    "arm64 int8": dict(target="arm64", precision="int8"),
    "cuda int4": dict(target="cuda", precision="int4", group_size=32),
    "apple-m int4": dict(target="apple-m", precision="int4", group_size=32),
    "metal ternary": dict(target="metal", precision="ternary"),
}
NEEDS = {"arm64 int8": "aarch64-linux-gnu-gcc", "cuda int4": "nvcc"}


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_two_builds_are_byte_identical(case, tmp_path):
    if case in NEEDS and shutil.which(NEEDS[case]) is None:
        pytest.skip(f"{NEEDS[case]} is not installed")
    if case == "apple-m int4" and importlib.util.find_spec("ziglang") is None and platform.system() != "Darwin":
        pytest.skip("linking a macOS dylib off a Mac needs the ziglang wheel")
    path = tmp_path / "llama.onnx"
    onnx.save(make_llama(LlamaConfig(), with_kv_cache=True), str(path))
    first, second = (_hashes(build(path, BuildOptions(out_dir=tmp_path / out, max_seq_len=32, **CASES[case]))
                             .manifest.parent) for out in ("one", "two/deeper"))
    assert len(first) >= 3
    assert first == second
