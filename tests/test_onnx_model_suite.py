"""Whole models stored in the onnx package (CNNs, pytorch-converted layers) through qcompile."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from qcompile.frontend import load
from qcompile.ir.interpret import run
from qcompile.testing.model_suite import collect_model_cases, run_model_suite

from .conftest import SUMMARY_LINES


@pytest.fixture(scope="module")
def suite():
    return run_model_suite(run)


def test_every_in_scope_model_matches_its_stored_outputs(suite):
    SUMMARY_LINES.append(suite.summary().replace("ONNX node tests", "ONNX model tests"))
    assert suite.in_scope >= 110
    assert not suite.failed, "\n".join(f"{k}: {v}" for k, v in suite.failed.items())


@pytest.mark.parametrize("name", ["light_resnet50", "light_squeezenet", "light_densenet121", "light_inception_v2"])
def test_light_cnns_match_onnxruntime(name):
    """The stored outputs of the light CNNs hardly depend on the input; onnxruntime does check it."""
    (case,) = [c for c in collect_model_cases(("light",)) if c.path.stem == name]
    graph = load(case.path)
    x = np.random.default_rng(1).standard_normal(graph.values[graph.inputs[0]].shape).astype(np.float32)
    sess = ort.InferenceSession(str(case.path), providers=["CPUExecutionProvider"])
    (expected,) = sess.run(None, {graph.inputs[0]: x})
    np.testing.assert_allclose(run(graph, {graph.inputs[0]: x})[graph.outputs[0]], expected, rtol=1e-4, atol=1e-6)
