"""Run a CUDA artifact's generated kernels on the CPU, unchanged: CI checks CUDA builds numerically
without a GPU.

`link_on_cpu` takes the build folder a `--keep-temps` CUDA build leaves (`out/<prefix>_build/`)
and links the same sources into a host library: kernels.cu (TVM's device kernels and qcompile's
launchers) through g++ with the CPU shim force-included (cuda_shim/cuda_shim.h: fibers per
thread, checked barriers and warp shuffles), the executor with QC_CUDA against the shim's
cuda_runtime_api.h (device memory is host memory), the C runtime and the weights, with the
artifact's own link flags (qcompile.artifact.link). The result loads with
`qcompile.artifact.loader.load` like the real artifact.

What this checks is the CUDA C source's semantics: not nvcc's code generation, the GPU memory
model, timing, or anything between blocks (they run one at a time).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..artifact import link
from ..artifact.runtime import include_dirs
from ..artifact.toolchain import Toolchain
from ..errors import QCompileError

SHIM_DIR = Path(__file__).parent / "cuda_shim"
_HINT = "the CPU shim (qcompile/testing/cuda_shim) may lack something this CUDA source uses"
_DYN_SHARED = re.compile(r"extern\s+__shared__[^;\[]*?(\w+)\s*\[\s*\]")     # its array's name


class CudaShimError(QCompileError):
    phase = "compile"


def compile_cxx(source: Path, out: Path, cuda: bool = True) -> Path:
    """One C++ source to a position-independent object with g++; `cuda`: CUDA C, with the shim
    force-included (-DQC_CUDA_SHIM makes the launchers' QC_LAUNCH the shim's, not `<<<>>>`)."""
    cxx = os.environ.get("CXX", "g++")
    if not shutil.which(cxx):
        raise CudaShimError(f"running CUDA kernels on the CPU needs a C++17 compiler; '{cxx}' is not installed",
                            hint="install g++ (apt-get install g++) or set CXX")
    lang = []
    if cuda:    # every `extern __shared__` array starts at the block's dynamic shared memory: one buffer
        names = sorted(set(_DYN_SHARED.findall(source.read_text())))
        lang = ["-x", "c++", "-DQC_CUDA_SHIM", "-include", "cuda_shim.h", *(f"-D{n}=qc_shim_dyn_shared" for n in names)]
    # -O1: the generated files are large and mostly straight-line; -O2 adds compile time, not coverage
    cmd = [cxx, "-std=c++17", "-O1", "-fPIC", "-fvisibility=hidden", f"-I{SHIM_DIR}",
           *(f"-I{d}" for d in include_dirs()), *lang, "-c", str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise CudaShimError(f"compiling {source} for the CPU shim failed ({cxx} exited {proc.returncode}):\n"
                            f"{proc.stderr.strip()[:4000]}", hint=_HINT)
    return out


def link_on_cpu(build_dir: Path, prefix: str, out: Path) -> Path:
    """The kept build folder of a CUDA build -> `out`, a host .so whose kernels run on the CPU.

    The loader finds the symbol prefix and the decoder's logits in `<stem>.manifest.json` next to
    the library: the build's manifest (beside the build folder) is copied there under `out`'s stem."""
    build_dir, out = Path(build_dir).resolve(), Path(out).resolve()
    sources = [build_dir / n for n in ("kernels.cu", f"{prefix}_exec.c", "qc_runtime.c", "weights.S")]
    missing = [s.name for s in sources if not s.exists()]
    if missing:
        raise CudaShimError(f"{build_dir} lacks {', '.join(missing)}: not the kept build folder of a CUDA build "
                            f"with prefix '{prefix}'", phase="options",
                            hint="build with --target cuda --keep-temps; the folder is <out>/<prefix>_build")
    kernels, executor, runtime_c, weights = sources
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qc_cuda_cpu_") as tmp:
        objects = [compile_cxx(kernels, Path(tmp) / "kernels.o"),
                   compile_cxx(SHIM_DIR / "cuda_shim.cpp", Path(tmp) / "cuda_shim.o", cuda=False)]
        # the artifact's own flags and version script; -I<shim> is the only folder with CUDA headers
        # (the toolkit's is not passed), so the executor's <cuda_runtime_api.h> is the shim's
        try:
            link.link_shared(out, objects, [executor, runtime_c], [weights], prefix, Toolchain(("gcc",), "linux-gnu"),
                             cflags=["-DQC_CUDA", f"-I{SHIM_DIR}"], libs=["-lstdc++"])
        except link.LinkError as exc:
            raise CudaShimError(f"linking {out.name} from {build_dir} with the CPU shim failed: {exc.message}",
                                phase="link", hint=_HINT) from None
    copy_manifest(build_dir.parent / f"{prefix}.manifest.json", out)
    return out


def copy_manifest(manifest: Path, library: Path) -> None:
    """The build's manifest beside a relinked library, where the loader looks for the symbol prefix."""
    beside = library.with_name(library.stem + ".manifest.json")
    if manifest.exists() and manifest != beside:
        shutil.copyfile(manifest, beside)
