"""Shared fixtures; also prints the ONNX node-suite summary at the end of the run."""

from __future__ import annotations

import numpy as np
import pytest

SUMMARY_LINES: list[str] = []


def pytest_terminal_summary(terminalreporter):
    for line in SUMMARY_LINES:
        terminalreporter.write_line(line)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
