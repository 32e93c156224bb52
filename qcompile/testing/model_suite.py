"""Whole-model tests stored inside the installed onnx package, run through qcompile.

`simple`, `pytorch-operator` and `pytorch-converted` hold a model.onnx with test_data_set_*/
input_N.pb and output_N.pb; `light` holds small CNNs (resnet50, squeezenet, ...) with constant
weights and one stored output. Later stages reuse this to check compiled artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import QCompileError
from ..frontend import load
from ..frontend.onnx import find_unsupported
from .node_suite import Runner, SuiteResult, compare

DATA_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data"
KINDS = ("simple", "pytorch-operator", "pytorch-converted", "light")


@dataclass
class ModelCase:
    name: str
    path: Path
    data_sets: list[tuple[list[np.ndarray], list[np.ndarray]]]


def _numbered(folder: Path, prefix: str) -> list[np.ndarray]:
    files = sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    return [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in files]


def collect_model_cases(kinds=KINDS) -> list[ModelCase]:
    cases = []
    for kind in kinds:
        root = DATA_DIR / kind
        if kind == "light":
            for path in sorted(root.glob("*.onnx")):
                outputs = [numpy_helper.to_array(onnx.load_tensor(str(path.with_name(path.stem + "_output_0.pb"))))]
                cases.append(ModelCase(f"light/{path.stem}", path, [([], outputs)]))
            continue
        for folder in sorted(p for p in root.iterdir() if (p / "model.onnx").exists()):
            sets = [(_numbered(ds, "input"), _numbered(ds, "output"))
                    for ds in sorted(folder.glob("test_data_set_*"))]
            cases.append(ModelCase(f"{kind}/{folder.name}", folder / "model.onnx", sets))
    return cases


def run_model_suite(runner: Runner, cases: list[ModelCase] | None = None, rtol: float = 1e-3,
                    atol: float = 1e-5) -> SuiteResult:
    result = SuiteResult()
    for case in cases if cases is not None else collect_model_cases():
        if find_unsupported(onnx.load(str(case.path), load_external_data=False).graph):
            result.out_of_scope.append(case.name)
            continue
        reason = _run(case, runner, rtol, atol)
        if reason is None:
            result.passed.append(case.name)
        else:
            result.failed[case.name] = reason
    return result


def _run(case: ModelCase, runner: Runner, rtol: float, atol: float) -> str | None:
    try:
        graph = load(case.path)
        for inputs, outputs in case.data_sets:
            if not inputs:   # light models: constant weights; any input of the declared shape
                rng = np.random.default_rng(0)
                inputs = [rng.standard_normal(graph.values[n].shape).astype(graph.values[n].dtype.np_dtype)
                          for n in graph.inputs]
            got = runner(graph, dict(zip(graph.inputs, inputs)))
            for name, expected in zip(graph.outputs, outputs):
                reason = compare(np.asarray(got[name]), expected, rtol, atol)
                if reason:
                    return f"output '{name}': {reason}"
    except QCompileError as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return None


__all__ = ["collect_model_cases", "run_model_suite", "ModelCase", "DATA_DIR", "KINDS"]
