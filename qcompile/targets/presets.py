"""Target presets: what `--target NAME` means. Pure data; lowering code reads it.

A preset names its TVM target (as a JSON-style dict, never LLVM's silent "native"), the CPU
features a library built for it needs at load time, its toolchain, and how far it is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    tvm_target: dict
    cpu_features: tuple[str, ...] = ()
    toolchain: str = "cc"
    abi: str = "linux-gnu"
    shared_suffix: str = ".so"
    status: str = "planned"    # planned | build-only | verified
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def gpu(self) -> bool:
        """Kernels for a GPU (plans, schedules and the artifact's toolchain differ)."""
        return self.tvm_target.get("kind") in ("cuda", "metal")


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("x86_64", "x86-64 with AVX-512 (VNNI, BF16); AMX tiles for prefill where present",
           {"kind": "llvm", "mcpu": "sapphirerapids", "mtriple": "x86_64-linux-gnu"},
           ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16"), "gcc", status="verified"),
    Preset("x86_64-v3", "x86-64 with AVX2 and FMA (Haswell and later, AMD Zen): the portable x86 build",
           {"kind": "llvm", "mcpu": "x86-64-v3", "mtriple": "x86_64-linux-gnu"}, ("avx2", "fma", "f16c"), "gcc", status="verified"),
    Preset("native", "the CPU this command runs on, detected explicitly (never LLVM's generic 'native')",
           {"kind": "llvm", "mcpu": "<detected>"}, (), "gcc", status="verified",
           notes="resolved to a concrete -mcpu and feature list at build time"),
    Preset("arm64", "ARMv8.2-A + NEON + dotprod (phones and boards of the last five years)",
           {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod"]},
           ("asimd", "asimddp"), "aarch64-linux-gnu-gcc", status="verified", notes="run under qemu-aarch64 in the tests"),
    Preset("arm64-v8", "ARMv8.0-A + NEON without dotprod: Cortex-A53/A72, Raspberry Pi 3/4",
           {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
           ("asimd",), "aarch64-linux-gnu-gcc", status="verified",
           notes="quantized kernels on smlal and, for ternary single rows, tbl lookups; run under "
                 "qemu-aarch64 -cpu cortex-a72 in the tests"),
    Preset("arm64-i8mm", "arm64 plus int8 matrix multiply (smmla)",
           {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", "+dotprod", "+i8mm"]},
           ("asimd", "asimddp", "i8mm"), "aarch64-linux-gnu-gcc", status="verified",
           notes="run under qemu-aarch64 in the tests"),
    Preset("arm64-android", "aarch64 Android 7+ (the NDK's clang: ANDROID_NDK_HOME or --cc)",
           {"kind": "llvm", "mtriple": "aarch64-linux-android", "mattr": ["+neon", "+dotprod"]},
           ("asimd", "asimddp"), "aarch64-linux-android24-clang", abi="android", status="build-only",
           notes="bionic ABI: no libpthread, 16 KiB-aligned segments"),
    Preset("apple-m", "Apple silicon (M1 and later) macOS, a .dylib",
           {"kind": "llvm", "mtriple": "arm64-apple-macos", "mcpu": "apple-m1"},
           ("asimd", "asimddp"), "clang", abi="darwin", shared_suffix=".dylib", status="build-only",
           notes="off a Mac, linked by zig cc (pip install ziglang)"),
    Preset("cuda", "NVIDIA GPUs, sm_80 (Ampere) and newer (PTX for newer)",
           {"kind": "cuda", "arch": "sm_80"}, (), "gcc", status="verified",
           notes="TVM's CUDA C (dlight and qcompile's schedules) + generated launchers, nvcc; the host C "
                 "compiler links the executor and the static CUDA runtime. Tests run the kernels on a "
                 "CUDA-on-CPU shim; tools/gpu_check.sh ran them on an H200 (docs/cuda.md)"),
    Preset("cuda-sm90", "NVIDIA Hopper (H100, H200), sm_90",
           {"kind": "cuda", "arch": "sm_90"}, (), "gcc", status="verified",
           notes="as cuda, with sm_90 machine code"),
    Preset("metal", "Apple GPUs, family 7+: M1/A14 and later (MSL kernels + Objective-C++ host)",
           {"kind": "metal"}, (), "xcrun", abi="darwin", shared_suffix=".dylib", status="build-only",
           notes="TVM's MSL (the CUDA target's schedules) + generated launchers; off a Mac the build writes "
                 "<prefix>_metal/ and build.sh finishes it there. Tests type-check the MSL and run it on a "
                 "Metal-on-CPU shim"),
]}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown target '{name}'; known: {', '.join(PRESETS)}") from None


# CPU feature (as /proc/cpuinfo and presets name it) -> the C compiler flag that enables it.
_GCC_FLAGS = {"avx": "-mavx", "avx2": "-mavx2", "fma": "-mfma", "f16c": "-mf16c", "avx512f": "-mavx512f",
              "avx512bw": "-mavx512bw", "avx512vl": "-mavx512vl", "avx512dq": "-mavx512dq",
              "avx512_vnni": "-mavx512vnni", "avx512_bf16": "-mavx512bf16", "avx512_fp16": "-mavx512fp16",
              "avx512vbmi": "-mavx512vbmi", "amx_tile": "-mamx-tile", "amx_int8": "-mamx-int8",
              "amx_bf16": "-mamx-bf16"}


def isa_flags(preset: Preset) -> tuple[str, ...]:
    """Flags that compile the C micro-kernels for exactly the preset's CPU features."""
    if "aarch64" in preset.tvm_target.get("mtriple", "") or "arm64" in preset.tvm_target.get("mtriple", ""):
        if "asimddp" not in preset.cpu_features:
            return ("-march=armv8-a",)  # baseline NEON: qc_qlinear.c's smlal / tbl kernels
        return ("-march=armv8.2-a+dotprod" + ("+i8mm" if "i8mm" in preset.cpu_features else ""),)
    return tuple(_GCC_FLAGS[f] for f in preset.cpu_features if f in _GCC_FLAGS)
