"""Compile the executor and runtime and link everything into one shared library."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..errors import QCompileError
from . import runtime


class LinkError(QCompileError):
    phase = "link"


# Debian/Ubuntu packages that provide each preset's compiler.
_PACKAGES = {"gcc": "gcc", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "clang": "clang"}


def require_compiler(cc: str) -> None:
    """Fail before any work when the target's C compiler is missing, naming what to install."""
    if shutil.which(cc) is None:
        package = _PACKAGES.get(cc)
        where = (f"install it with: apt-get install {package} (tools/setup.sh does)" if package else
                 "for Android, point --cc at the NDK's aarch64-linux-android<API>-clang" if "android" in cc else
                 "pass --cc with the compiler to use")
        raise LinkError(f"the C compiler '{cc}' that this target needs is not installed", hint=where)


def link_shared(out: Path, objects: list[Path], c_sources: list[Path], asm_sources: list[Path], prefix: str,
                cc: str = "gcc", extra_flags: tuple[str, ...] = ()) -> None:
    require_compiler(cc)
    out = out.resolve()
    version_script = out.with_suffix(".map")
    version_script.write_text(f"{{ global: {prefix}_*; local: *; }};\n")
    includes = [f"-I{d}" for d in runtime.include_dirs()] + [f"-I{c_sources[0].parent}"]
    cmd = [cc, "-shared", "-fPIC", "-O2", "-std=gnu11", "-Wall", "-fvisibility=hidden", *includes,
           *map(str, c_sources), *map(str, asm_sources), *map(str, objects),
           f"-Wl,--version-script={version_script}", "-Wl,--no-undefined", "-Wl,-z,noexecstack",
           "-Wl,--build-id=none", "-o", str(out), "-lpthread", "-lm", *extra_flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=c_sources[0].parent)
    version_script.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise LinkError(f"linking {out.name} failed ({cc} exited {proc.returncode}):\n{proc.stderr.strip()[:4000]}",
                        hint="this is a qcompile bug; please report it with QCOMPILE_DEBUG=1 output")


def compile_object(out: Path, source: Path, cc: str = "gcc", flags: tuple[str, ...] = ()) -> Path:
    """One C source to an object, with the target's instruction-set flags (micro-kernels)."""
    require_compiler(cc)
    cmd = [cc, "-c", "-fPIC", "-O3", "-std=gnu11", "-Wall", "-fvisibility=hidden", *flags, str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LinkError(f"compiling {source.name} failed ({cc} exited {proc.returncode}):\n{proc.stderr.strip()[:4000]}",
                        hint="this is a qcompile bug; please report it with QCOMPILE_DEBUG=1 output")
    return out
