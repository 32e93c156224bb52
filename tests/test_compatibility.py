"""The compatibility matrix (qcompile.testing.compat): bundled models built for every target preset
at every precision, each library run on its test vectors wherever this machine can run it (this
CPU, qemu-aarch64, the CUDA and Metal CPU shims).

In CI: the MLP's 77 cells, which must all build, verify where a verifier exists, and agree with
docs/compatibility.json. QCOMPILE_COMPAT=full (`python tools/compat.py`) runs every model and
writes docs/compatibility.md and docs/compatibility.json: the table is generated, never typed."""

from __future__ import annotations

import os
from pathlib import Path

from qcompile import __version__
from qcompile.testing import compat

DOCS = Path(__file__).resolve().parents[1] / "docs"
FULL = os.environ.get("QCOMPILE_COMPAT") == "full"


def test_compatibility_matrix(tmp_path):
    names = list(compat.models()) if FULL else ["mlp"]
    # the full run takes half an hour: say where it is (tools/compat.py runs pytest with -s)
    progress = (lambda i, n, c: print(f"[{i}/{n}] {c.model} {c.preset} {c.precision}: {c.status} {c.detail}",
                                      flush=True)) if FULL else None
    cells = compat.run(names, tmp_path, progress)
    failed = [f"{c.model} {c.preset} {c.precision}: {c.detail}" for c in cells if c.status == "failed"]
    assert not failed, "\n".join(failed)
    unchecked = [f"{c.model} {c.preset} {c.precision}" for c in cells
                 if c.status == "built" and compat.verifier(c.preset) is not None]
    assert not unchecked, f"built but not run although this machine can run them: {unchecked}"
    if FULL:
        (DOCS / "compatibility.json").write_text(compat.to_json(cells))
        real, real_host = compat.recorded_real(DOCS)
        (DOCS / "compatibility.md").write_text(compat.render(cells, __version__, real, real_host=real_host))
        return
    recorded = compat.from_json((DOCS / "compatibility.json").read_text())
    assert {(c.model, c.preset, c.precision) for c in cells} <= {(c.model, c.preset, c.precision) for c in recorded}
    changed = compat.disagreements(cells, recorded)
    assert not changed, ("the matrix changed; if that is intended, regenerate docs/compatibility.md with "
                         "`python tools/compat.py`:\n" + "\n".join(changed))


def test_only_real_changes_count_as_disagreements():
    recorded = [compat.Cell("m", "x86_64", "fp32", "built"), compat.Cell("m", "arm64", "int4", "verified"),
                compat.Cell("m", "cuda", "fp16", "refused", detail="[lower] no")]
    now = [compat.Cell("m", "x86_64", "fp32", "verified"),       # a machine that can run it: fine
           compat.Cell("m", "arm64", "int4", "failed", detail="disagrees"),
           compat.Cell("m", "cuda", "fp16", "verified"), compat.Cell("m", "metal", "fp32", "verified")]
    assert compat.disagreements(now, recorded) == [
        "m arm64 int4: failed (disagrees); recorded verified ()",
        "m cuda fp16: verified (); recorded refused ([lower] no)",
        "m metal fp32: verified, not in the recorded matrix"]

