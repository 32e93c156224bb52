"""Regenerate docs/compatibility.md and docs/compatibility.json: every bundled model (MLP,
Llama-style decoder, BERT-style encoder) built for every target preset at every precision, each
library run on its test vectors where this machine can run it. About half an hour on 2 cores.

  python tools/compat.py

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
    if len(sys.argv) > 1:
        print(__doc__)
        return 0 if sys.argv[1] in ("-h", "--help") else 2
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s",
                           str(root / "tests" / "test_compatibility.py")], cwd=root,
                          env={**os.environ, "QCOMPILE_COMPAT": "full"}).returncode


if __name__ == "__main__":
    sys.exit(main())
