"""Fuzzed inputs (qcompile.testing.fuzz): corrupted models through the build's front half end in
a build or a qcompile error, never another exception or a hang, on a fixed budget of cases drawn
by hypothesis; and the two escapes fuzzing found stay fixed (names and strings that are not
UTF-8). tools/fuzz.py runs longer campaigns."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qcompile.errors import InvalidModelError
from qcompile.frontend import load
from qcompile.testing import fuzz
from qcompile.zoo import make_mlp

SEEDS = fuzz.seed_models()


@settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.integers(0, len(SEEDS) - 1), seed=st.integers(0, 2**32 - 1), count=st.integers(1, 4),
       precision=st.sampled_from(fuzz.PRECISIONS))
def test_a_corrupted_model_is_built_or_refused_never_crashes(tmp_path_factory, model, seed, count, precision):
    data, done = fuzz.mutate(SEEDS[model], random.Random(seed), count)
    outcome = fuzz.run_case(data, precision, tmp_path_factory.mktemp("fuzz"), timeout=120)
    assert outcome.kind in ("built", "refused"), f"{done}: {outcome.kind}: {outcome.detail}"


def _with_bad_byte(data: bytes, text: bytes) -> bytes:
    """`text` (a name in the model) with its first byte made invalid UTF-8, same length."""
    assert text in data
    return data.replace(text, b"\xed" + text[1:], 1)


@pytest.mark.parametrize("what", ["node name", "value name"])
def test_names_that_are_not_utf8_are_a_corrupted_file(tmp_path, what):
    model = make_mlp()
    text = (model.graph.node[0].name if what == "node name" else model.graph.node[0].output[0]).encode()
    path = tmp_path / "bad.onnx"
    path.write_bytes(_with_bad_byte(model.SerializeToString(), text))
    with pytest.raises(InvalidModelError, match="not valid UTF-8.*the file is corrupted"):
        load(path)
