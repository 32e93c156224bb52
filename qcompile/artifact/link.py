"""Compile the executor and runtime and link everything into one shared library."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..errors import QCompileError
from . import runtime
from .toolchain import Toolchain


class LinkError(QCompileError):
    phase = "link"


_BUG = "this is a qcompile bug; please report it with QCOMPILE_DEBUG=1 output"


def link_shared(out: Path, objects: list[Path], c_sources: list[Path], asm_sources: list[Path], prefix: str,
                tc: Toolchain, cflags: list[str] = (), libs: list[str] = ()) -> None:
    out = out.resolve()
    exports = out.with_suffix(".exports")
    exports.write_text(tc.exports(prefix))
    includes = [f"-I{d}" for d in runtime.include_dirs()] + [f"-I{c_sources[0].parent}"]
    cmd = [*tc.driver, "-fPIC", "-O2", "-std=gnu11", "-Wall", "-fvisibility=hidden", *includes, *cflags,
           *map(str, c_sources), *map(str, asm_sources), *map(str, objects), *tc.shared_flags(exports, out.name),
           "-o", str(out), *libs, *tc.libs]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=c_sources[0].parent)
    exports.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise LinkError(f"linking {out.name} failed ({tc.driver[-1]} exited {proc.returncode}):\n"
                        f"{proc.stderr.strip()[:4000]}", hint=_BUG)


def compile_object(out: Path, source: Path, tc: Toolchain, includes: list[str] = ()) -> Path:
    """One C source to an object, with the target's instruction-set flags (micro-kernels)."""
    return _compile(tc, source, ["-c", "-fPIC", "-O3", "-std=gnu11", "-Wall", "-fvisibility=hidden", *tc.isa_flags,
                                 *(f"-I{d}" for d in includes), str(source), "-o", str(out)], out)


def compile_program(out: Path, source: Path, tc: Toolchain, includes: list[str] = ()) -> Path:
    """One C source to an executable for the target (qcompile tune's bench program)."""
    return _compile(tc, source, ["-O2", "-std=gnu11", "-Wall", *tc.isa_flags, *(f"-I{d}" for d in includes),
                                 str(source), "-o", str(out), "-ldl", "-lpthread"], out)


def _compile(tc: Toolchain, source: Path, args: list[str], out: Path) -> Path:
    proc = subprocess.run([*tc.driver, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise LinkError(f"compiling {source.name} failed ({tc.driver[-1]} exited {proc.returncode}):\n"
                        f"{proc.stderr.strip()[:4000]}", hint=_BUG)
    return out
