"""The Metal artifact: a folder with everything a Mac needs to make the model's one dylib.

Apple's Metal compiler exists only on macOS (and Windows), so a Metal build writes a folder of
sources: the kernels' MSL (kernels.metal), their launchers (kernels_host.mm), the Metal runtime
(qc_metal.mm, Objective-C++), the executor and C runtime shared with every target, the weights and
the headers they include, and build.sh. build.sh compiles the MSL into a metallib, embeds it and
the weights in the library (assembler .incbin, as the other targets embed weights) and links
`<prefix>.dylib` against Metal.framework; apps then need nothing else. Where `xcrun` exists,
`qcompile build` runs build.sh itself; elsewhere it says so and prints the command.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from ..errors import QCompileError
from .runtime import RUNTIME_DIR

MSL_STD = "metal3.0"          # TVM writes bf16 as ushort bit operations: no MSL bfloat needed
MACOS_MIN = "13.0"
IOS_MIN = "16.0"              # MSL 3.0 on both
SOURCES = ("kernels.metal", "kernels_host.mm", "qc_metal.mm", "qc_metal.h", "qc_runtime.c", "qc_runtime.h",
           "weights.bin", "weights.S", "metallib.S", "build.sh", "README.md")


class MetalBuildError(QCompileError):
    phase = "link"


def xcrun() -> str | None:
    """Apple's tool runner, on a Mac with the Xcode command-line tools."""
    return shutil.which("xcrun") if platform.system() == "Darwin" else None


def metallib_asm(prefix: str) -> str:
    """Mach-O assembly embedding <prefix>.metallib between two hidden symbols (its size is their
    difference)."""
    return (f"  .section __TEXT,__const\n  .p2align 4\n"
            f"  .globl _{prefix}_metallib\n  .private_extern _{prefix}_metallib\n"
            f"  .globl _{prefix}_metallib_end\n  .private_extern _{prefix}_metallib_end\n"
            f'_{prefix}_metallib:\n  .incbin "{prefix}.metallib"\n_{prefix}_metallib_end:\n')


def build_script(prefix: str) -> str:
    library = f"{prefix}.dylib"
    return f"""#!/bin/sh
# Finishes the Metal build of '{prefix}' on macOS (Xcode or its command-line tools):
#   the MSL -> {prefix}.metallib, then {prefix}.metallib, the weights, the launchers, the
#   Metal runtime and the executor -> ../{library} (arm64, macOS {MACOS_MIN}+, Apple GPU family 7+).
# SDK=iphoneos sh build.sh builds it for iOS {IOS_MIN}+ instead (Xcode).
set -eu
cd "$(dirname "$0")"
SDK=${{SDK:-macosx}}
case "$SDK" in
  iphoneos*) MIN=-miphoneos-version-min={IOS_MIN} ;;
  *) MIN=-mmacosx-version-min={MACOS_MIN} ;;
esac
xcrun -sdk "$SDK" metal -std={MSL_STD} -O3 -Wall -c kernels.metal -o kernels.air
xcrun -sdk "$SDK" metallib kernels.air -o {prefix}.metallib
CFLAGS="-arch arm64 $MIN -O2 -fPIC -fvisibility=hidden -DQC_METAL -I. -Iinclude"
xcrun -sdk "$SDK" clang $CFLAGS -std=gnu11 -c {prefix}_exec.c -o exec.o
xcrun -sdk "$SDK" clang $CFLAGS -std=gnu11 -c qc_runtime.c -o qc_runtime.o
xcrun -sdk "$SDK" clang++ $CFLAGS -std=c++17 -fobjc-arc -c kernels_host.mm -o kernels_host.o
xcrun -sdk "$SDK" clang++ $CFLAGS -std=c++17 -fobjc-arc -c qc_metal.mm -o qc_metal.o
xcrun -sdk "$SDK" clang $CFLAGS -c weights.S -o weights.o
xcrun -sdk "$SDK" clang $CFLAGS -c metallib.S -o metallib.o
printf '_{prefix}_*\\n' > exports.txt
xcrun -sdk "$SDK" clang++ -arch arm64 $MIN -dynamiclib \\
  -Wl,-exported_symbols_list,exports.txt -install_name @rpath/{library} \\
  exec.o qc_runtime.o kernels_host.o qc_metal.o weights.o metallib.o \\
  -framework Metal -framework Foundation -o ../{library}
echo "built $(cd .. && pwd)/{library}"
"""


def readme(prefix: str) -> str:
    return f"""# {prefix}: the Metal build, ready to finish on a Mac

Apple's Metal compiler runs only on macOS, so `qcompile build --target metal` wrote this folder
instead of the library. On a Mac (Apple silicon, macOS {MACOS_MIN} or later), in the folder that holds
this one:

```
xcode-select --install        # once: xcrun, the Metal compiler and clang
sh {prefix}_metal/build.sh    # -> {prefix}.dylib beside this folder
```

For iOS {IOS_MIN}+ (with Xcode): `SDK=iphoneos sh {prefix}_metal/build.sh`.

`{prefix}.dylib` then holds everything: the kernels (compiled to a metallib and embedded), the
Metal runtime, the executor and the weights. Apps include `{prefix}.h` (the C API, also beside
this folder), link the dylib and call `{prefix}_create` / `{prefix}_run`; no other file is needed
at run time. It runs on Apple GPUs of family 7 and later (M1, A14 and newer); elsewhere
`{prefix}_create` fails with the reason.

| file | what it is |
|---|---|
| kernels.metal | the kernels' Metal Shading Language, from TVM |
| kernels_host.mm | the launchers: threadgroups, buffers and arguments of each dispatch |
| qc_metal.mm, qc_metal.h | the Metal runtime (device, pipelines, buffers, command buffers) |
| {prefix}_exec.c, {prefix}_tables.h, {prefix}_config.h, {prefix}.h | the executor and its C API |
| qc_runtime.c, qc_runtime.h | the C runtime (errors, the weights' checksum) |
| weights.bin, weights.S | the weights, embedded and checksummed at load |
| metallib.S | embeds {prefix}.metallib, which build.sh makes |
| include/ | the C headers the executor includes |
"""


def write_folder(folder: Path, prefix: str, kernels_metal: str, kernels_host: str, build_files: Path) -> Path:
    """The sources folder: `build_files` holds the generated executor, tables and weights (the
    build's temporary folder); returns build.sh."""
    import tvm_ffi  # the FFI's C header, which the executor and launchers include

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernels.metal").write_text(kernels_metal)
    (folder / "kernels_host.mm").write_text(kernels_host)
    for name in ("qc_metal.mm", "qc_metal.h", "qc_runtime.c", "qc_runtime.h"):
        shutil.copy(RUNTIME_DIR / name, folder / name)
    for name in (f"{prefix}.h", f"{prefix}_config.h", f"{prefix}_tables.h", f"{prefix}_exec.c", "weights.bin",
                 "weights.S"):
        shutil.copy(build_files / name, folder / name)
    (folder / "metallib.S").write_text(metallib_asm(prefix))
    include = Path(os.path.dirname(tvm_ffi.__file__)) / "include"
    for header in ("tvm/ffi/c_api.h", "dlpack/dlpack.h"):
        (folder / "include" / header).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(include / header, folder / "include" / header)
    (folder / "README.md").write_text(readme(prefix))
    script = folder / "build.sh"
    script.write_text(build_script(prefix))
    script.chmod(0o755)
    return script


def finish(script: Path) -> None:
    """Runs build.sh (on a Mac)."""
    proc = subprocess.run(["sh", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        log = (proc.stdout + proc.stderr).strip()[-4000:]
        raise MetalBuildError(f"{script} failed (exit {proc.returncode}):\n{log}",
                              hint="the Xcode command-line tools (xcode-select --install) provide xcrun, metal and "
                                   "metallib (macOS 13 or later)")
