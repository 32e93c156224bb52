"""The `native` preset made concrete: the host CPU's LLVM name and the features a library built
for it will require at load time. Never LLVM's "native", which silently means generic x86-64."""

from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

from tvm.target import codegen

from ..presets import Preset

# Features the runtime can check (qc_cpu_missing_features) that change code generation.
CHECKED_X86 = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd",
               "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx512vbmi", "amx_tile", "amx_int8", "amx_bf16")
CHECKED_ARM = ("asimd", "asimddp", "i8mm", "bf16", "sve")


def detect_host_cpu() -> str:
    name = codegen.llvm_get_system_cpu()
    if not name or name in ("generic", "native"):
        raise RuntimeError("could not detect the host CPU; use an explicit --target preset")
    return name


def host_cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


# /proc/cpuinfo flag -> LLVM feature name, for features a CPU model implies but a host may lack.
_LLVM_X86 = {"avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw",
             "avx512vl": "avx512vl", "avx512dq": "avx512dq", "avx512cd": "avx512cd", "avx512_vnni": "avx512vnni",
             "avx512_bf16": "avx512bf16", "avx512_fp16": "avx512fp16", "avx512vbmi": "avx512vbmi",
             "amx_tile": "amx-tile", "amx_int8": "amx-int8", "amx_bf16": "amx-bf16"}


def resolve(preset: Preset) -> Preset:
    """A preset whose target names a concrete CPU; other presets come back unchanged.

    A virtual machine can report a CPU model (say znver4) while its hypervisor hides some of that
    model's features (AVX-512): every feature the host lacks is switched off explicitly, or LLVM
    would emit instructions that fault."""
    if preset.tvm_target.get("mcpu") != "<detected>":
        return preset
    arm = platform.machine() in ("aarch64", "arm64")
    checked = CHECKED_ARM if arm else CHECKED_X86
    flags = host_cpu_flags()
    target = dict(preset.tvm_target, mcpu=detect_host_cpu())
    if not arm:
        target["mattr"] = [f"-{llvm}" for flag, llvm in _LLVM_X86.items() if flag not in flags]
    return dataclasses.replace(preset, tvm_target=target, cpu_features=tuple(f for f in checked if f in flags),
                               summary=f"{preset.summary} ({target['mcpu']})")
