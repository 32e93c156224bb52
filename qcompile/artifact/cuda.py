"""The CUDA artifact's toolchain: nvcc compiles the device kernels and their host launchers (one
.cu file) for the preset's architecture, with ptxas' spill report checked; the executor is the
CPU one built with QC_CUDA; the CUDA runtime is linked statically, so the library needs only the
NVIDIA driver (libcuda) at run time."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ..errors import QCompileError

_BUG = "this is a qcompile bug; please report it"


class CudaToolchainError(QCompileError):
    phase = "compile"


@dataclass
class PtxasReport:
    kernel: str
    registers: int
    spill_bytes: int


def nvcc() -> str:
    path = shutil.which("nvcc") or (str(Path(cuda_home()) / "bin" / "nvcc") if cuda_home() else None)
    if not path or not Path(path).exists():
        raise CudaToolchainError("the CUDA target needs nvcc (the CUDA toolkit), which is not installed",
                                 phase="options", hint="install the CUDA toolkit 12 or 13, or put nvcc on PATH")
    return path


def cuda_home() -> str | None:
    """The toolkit root: $CUDA_HOME, $CUDA_PATH, above nvcc, or /usr/local/cuda (the first with headers)."""
    found = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  str(Path(os.path.realpath(found)).parent.parent) if found else None, "/usr/local/cuda"]
    for c in filter(None, candidates):
        if (Path(c) / "include" / "cuda_runtime_api.h").exists():
            return c
    return None


def _cuda_dirs() -> tuple[Path, Path]:
    home = Path(cuda_home() or "/usr/local/cuda")
    lib = next((home / d for d in ("lib64", "lib", "targets/x86_64-linux/lib") if (home / d / "libcudart_static.a").exists()),
               None)
    if lib is None:
        raise CudaToolchainError(f"libcudart_static.a is not under {home}", phase="link",
                                 hint="set CUDA_HOME to the CUDA toolkit's root")
    return home / "include", lib


def gencode(arch: str) -> list[str]:
    """Machine code for `arch` plus its PTX, which the driver compiles for newer GPUs."""
    num = arch.split("_")[1]
    return ["-gencode", f"arch=compute_{num},code=[sm_{num},compute_{num}]"]


def compile_device(source: Path, arch: str, out: Path, includes: list[str]) -> list[PtxasReport]:
    """One .cu (kernels + launchers) to a position-independent object; fails on any error and on
    any register spill (a spill in a decode GEMV costs more than the kernel saves).

    Under TVM's `__launch_bounds__(N)` ptxas may cap registers below what a kernel needs (a
    128-thread attention kernel got 32 registers and spilled on sm_90); a kernel that spills is
    given `__launch_bounds__(N, 1)` (one block per SM suffices) and compiled again."""
    reports = check_spills(_nvcc(source, arch, out, includes), arch, fail=False)
    spilled = {r.kernel for r in reports if r.spill_bytes}
    if spilled:
        text = source.read_text()
        for name in spilled:
            text = re.sub(rf"__launch_bounds__\((\d+)\)(\s+{name}\s*\()", r"__launch_bounds__(\1, 1)\2", text)
        source.write_text(text)
        reports = check_spills(_nvcc(source, arch, out, includes), arch)
    _drop_temporary_names(out)
    return reports


def _drop_temporary_names(obj: Path) -> None:
    """nvcc names its host pass's source after its process (tmpxft_<pid>_...cudafe1.cpp), and that
    name lands in the object's file symbol: dropped, so the same build gives the same bytes."""
    symbols = subprocess.run(["readelf", "-sW", str(obj)], capture_output=True, text=True).stdout
    names = sorted({line.split()[-1] for line in symbols.splitlines() if " FILE " in line and "tmpxft_" in line})
    if names:
        subprocess.run(["objcopy", *(f"--strip-symbol={n}" for n in names), str(obj)], check=True,
                       capture_output=True)


def _nvcc(source: Path, arch: str, out: Path, includes: list[str]) -> str:
    cmd = [nvcc(), *gencode(arch), "-c", "-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden",
           "-Xptxas", "-v", "-Xptxas", "--warn-on-spills", "-diag-suppress", "177,550",
           *(f"-I{d}" for d in includes), str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CudaToolchainError(f"nvcc ({arch}) failed on {source.name} (exit {proc.returncode}):\n"
                                 f"{proc.stderr.strip()[-3000:]}", hint=_BUG)
    return proc.stderr


def check_spills(ptxas_log: str, arch: str, fail: bool = True) -> list[PtxasReport]:
    """ptxas -v's report per kernel; a spill fails the build (with fail)."""
    reports, current = [], None
    for line in ptxas_log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            current = m.group(1)
        elif current and (m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)):
            reports.append(PtxasReport(current, 0, int(m.group(1)) + int(m.group(2))))
        elif current and reports and (m := re.search(r"Used (\d+) registers", line)):
            reports[-1].registers = int(m.group(1))
    spilled = [f"{r.kernel} ({r.spill_bytes} B)" for r in reports if r.spill_bytes]
    if spilled and fail:
        raise CudaToolchainError(f"register spills for {arch}: {', '.join(spilled)}",
                                 hint="a schedule keeps too much in registers; " + _BUG)
    return reports


def executor_flags() -> list[str]:
    include, _ = _cuda_dirs()
    return ["-DQC_CUDA", f"-I{include}"]


def link_libs() -> list[str]:
    """The CUDA runtime, statically: only the driver (libcuda.so, loaded by cudart) is needed."""
    _, lib = _cuda_dirs()
    return [str(lib / "libcudart_static.a"), "-ldl", "-lrt", "-lpthread", "-lstdc++"]
