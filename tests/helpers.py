"""Shared test helpers."""

from __future__ import annotations

import onnxruntime as ort


def ort_run(path, feeds) -> dict:
    """Run an ONNX file with onnxruntime's CPU provider; outputs by name."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
