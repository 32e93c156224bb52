"""The error classes users see. Every error names what failed and where, with a hint.

A `QCompileError` renders as one readable paragraph: the phase, the node and op (with opset)
when known, the problem, and a hint. The CLI prints `str(err)` and exits non-zero; it never
shows a traceback unless QCOMPILE_DEBUG is set.
"""

from __future__ import annotations


class QCompileError(Exception):
    """Base class: a problem qcompile understood and can explain."""

    phase = "compile"

    def __init__(self, message: str, *, node: str | None = None, op: str | None = None,
                 opset: int | None = None, phase: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.node = node
        self.op = op
        self.opset = opset
        self.hint = hint
        if phase is not None:
            self.phase = phase

    def __str__(self) -> str:
        where = []
        if self.node is not None:
            where.append(f"node '{self.node}'")
        if self.op is not None:
            where.append(f"op {self.op}" + (f" (opset {self.opset})" if self.opset else ""))
        head = f"[{self.phase}] " + (", ".join(where) + ": " if where else "")
        text = head + self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ModelLoadError(QCompileError):
    """The file is missing, unreadable, not ONNX, or truncated."""

    phase = "load"


class InvalidModelError(QCompileError):
    """The file is ONNX but the model is malformed (checker failure, dangling input, cycle)."""

    phase = "check"


class UnsupportedOpsError(QCompileError):
    """One or more op types (or opsets) have no converter; lists all of them at once."""

    phase = "coverage"

    def __init__(self, message: str, unsupported: dict[str, list[str]], **kw):
        super().__init__(message, **kw)
        self.unsupported = unsupported


class VerifyError(QCompileError):
    """An IR invariant is broken (types, shapes, dangling values, cycles)."""

    phase = "verify"


class InterpretError(QCompileError):
    """The reference interpreter could not execute a node."""

    phase = "interpret"


class PassError(QCompileError):
    """A pass failed or left the graph invalid."""

    phase = "pass"
