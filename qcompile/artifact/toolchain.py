"""Which C compiler driver builds a preset's library, and the flags its object format needs.

Three ABIs: linux-gnu (gcc or clang, ELF, a version script keeps only the API exported),
android (the NDK's clang, ELF, no libpthread since bionic's libc has it, 16 KiB pages for
Android 15) and darwin (Mach-O: an exported-symbols list, underscore-prefixed symbols). macOS
libraries are built with clang on a Mac; elsewhere with `zig cc` from the `ziglang` wheel, which
carries the macOS libc headers and stubs and so links a real arm64 dylib on Linux.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import QCompileError
from ..targets.presets import isa_flags


class ToolchainError(QCompileError):
    phase = "link"


# Debian/Ubuntu packages that provide each preset's compiler.
_PACKAGES = {"gcc": "gcc", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "clang": "clang"}
ANDROID_API = 24        # Android 7.0: the NDK's oldest supported level with 64-bit dotprod phones well past it
_NDK_BIN = "toolchains/llvm/prebuilt/linux-x86_64/bin"


@dataclass(frozen=True)
class Toolchain:
    driver: tuple[str, ...]          # argv prefix: the compiler and the target it is told to build for
    abi: str                         # linux-gnu | android | darwin
    isa_flags: tuple[str, ...] = ()  # the preset's CPU features, spelled for this driver

    @property
    def macho(self) -> bool:
        return self.abi == "darwin"

    def shared_flags(self, exports_file: Path, library: str) -> list[str]:
        """Flags that link the shared library `library` exporting only the symbols in exports_file."""
        if self.macho:
            # Apple's ld honours the list; zig's linker ignores it, which leaves the kernels' symbols
            # visible too (harmless under macOS's two-level namespace: no cross-library binding)
            # -S: no debug map (stabs naming the temporary build folder), so a build is reproducible
            return ["-shared", f"-Wl,-exported_symbols_list,{exports_file}", f"-Wl,-install_name,@rpath/{library}",
                    "-Wl,-S"]
        flags = ["-shared", f"-Wl,--version-script={exports_file}", "-Wl,--no-undefined", "-Wl,-z,noexecstack",
                 "-Wl,--build-id=none"]
        if self.abi == "android":
            flags.append("-Wl,-z,max-page-size=16384")      # loads on 16 KiB-page devices (Android 15+)
        return flags

    def exports(self, prefix: str) -> str:
        """The exports file's text: every `prefix_*` symbol, nothing else."""
        return f"_{prefix}_*\n" if self.macho else f"{{ global: {prefix}_*; local: *; }};\n"

    @property
    def libs(self) -> list[str]:
        return ["-lm"] if self.abi in ("android", "darwin") else ["-lpthread", "-lm"]


def for_preset(preset, cc: str | None = None) -> Toolchain:
    """The toolchain that builds `preset`; `cc` (the --cc option) replaces the compiler.

    Fails before any work with what to install when the compiler is missing."""
    if preset.abi == "darwin":
        driver = (cc,) if cc else _darwin_driver()
        isa = ("-mcpu=apple_m1",) if "ziglang" in driver else ("-mcpu=apple-m1",)
        _require(driver[0], preset)
        return Toolchain(driver, "darwin", isa)
    if preset.abi == "android":
        driver = (cc or ndk_clang() or preset.toolchain,)
    else:
        driver = (cc or preset.toolchain,)
    _require(driver[0], preset)
    return Toolchain(driver, preset.abi, isa_flags(preset))


def _darwin_driver() -> tuple[str, ...]:
    if platform.system() == "Darwin":
        return ("clang", "-target", "arm64-apple-macos11")
    if importlib.util.find_spec("ziglang") is not None:
        return (sys.executable, "-m", "ziglang", "cc", "-target", "aarch64-macos.11.0")
    raise ToolchainError("building a macOS library off a Mac needs zig's C compiler, which is not installed",
                         hint="pip install ziglang (bash tools/setup.sh --test does), or build on a Mac with "
                              "Xcode's clang")


def ndk_clang() -> str | None:
    for var in ("ANDROID_NDK_HOME", "ANDROID_NDK_ROOT", "ANDROID_NDK"):
        root = os.environ.get(var)
        if root:
            clang = Path(root) / _NDK_BIN / f"aarch64-linux-android{ANDROID_API}-clang"
            if clang.exists():
                return str(clang)
    return None


def _require(cc: str, preset) -> None:
    if cc == sys.executable or shutil.which(cc) is not None:
        return
    package = _PACKAGES.get(cc)
    if package:
        hint = f"install it with: apt-get install {package} (tools/setup.sh does)"
    elif preset.abi == "android":
        hint = (f"set ANDROID_NDK_HOME to an Android NDK (r23 or newer), or pass --cc "
                f"<ndk>/{_NDK_BIN}/aarch64-linux-android{ANDROID_API}-clang")
    else:
        hint = "pass --cc with the compiler to use"
    raise ToolchainError(f"the C compiler '{cc}' that target '{preset.name}' needs is not installed", hint=hint)
