"""Check a Metal artifact's MSL without a Mac: type-check it, and run it on the CPU.

No Apple compiler exists on Linux, so both checks are against our model of MSL
(metal_shim/metal_stdlib, a C++17 stand-in for <metal_stdlib>):

- `typecheck`: clang++ -fsyntax-only on the unchanged MSL. It catches what MSL's type rules
  reject and C++'s would not unless modelled: implicit conversions between vector types, writes
  to `constant` buffers, a barrier without mem_flags, misspelled attributes, undeclared names.
- `compile_kernels` / `link_on_cpu`: the same MSL compiled by g++ into fibers of the CUDA shim's
  scheduler (cuda_shim/cuda_shim.cpp: checked barriers, SIMD-group functions as warp
  operations), each kernel behind a thunk that binds its [[buffer(i)]], its `constant` arguments
  and its position attributes, and qc_metal.h implemented on the CPU (metal_shim/qc_metal_cpu.cpp);
  `link_on_cpu` links a kept Metal build folder into a host library that loads with
  `qcompile.artifact.loader.load` like the real artifact.

What this cannot tell: Apple's compiler's acceptance of anything the model allows (a macOS build
is still needed), its code generation (fast math, FMA contraction), the GPU's memory model,
timing, and anything between threadgroups (they run one at a time).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..artifact import codegen, link
from ..artifact.runtime import include_dirs
from ..artifact.toolchain import Toolchain
from ..errors import QCompileError
from .cuda_cpu import SHIM_DIR as CUDA_SHIM_DIR, copy_manifest

SHIM_DIR = Path(__file__).parent / "metal_shim"
_HINT = "the CPU shim (qcompile/testing/metal_shim) may lack something this MSL uses"
TYPECHECK_FLAGS = ("-std=c++17", "-fsyntax-only", "-Wall", "-Werror=unknown-attributes", "-x", "c++")


class MetalShimError(QCompileError):
    phase = "compile"


def typecheck(source: Path, extra_flags=()) -> None:
    """clang++ -fsyntax-only on the MSL against the stand-in <metal_stdlib>; MetalShimError with
    the errors (file:line:col: error: ...) when it fails."""
    clang = os.environ.get("CXX_CLANG", "clang++")
    if not shutil.which(clang):
        raise MetalShimError(f"type-checking MSL needs clang++; '{clang}' is not installed",
                             hint="install clang (apt-get install clang) or set CXX_CLANG")
    proc = subprocess.run([clang, *TYPECHECK_FLAGS, f"-I{SHIM_DIR}", *extra_flags, str(source)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise MetalShimError(f"{source} does not type-check as MSL ({clang} exited {proc.returncode}):\n"
                             f"{_errors(proc.stderr)[:4000]}", hint=_HINT)


_DIAGNOSTIC = re.compile(r"^\S.*?:\d+:\d+: (fatal error|error|warning|note|remark):")


def _errors(stderr: str) -> str:
    """clang's errors and their notes on the MSL, without the warnings (TVM's MSL has many unused
    variables) or the notes inside the stand-in header."""
    in_error = keep = False
    out = []
    for line in stderr.splitlines():
        m = _DIAGNOSTIC.match(line)
        if m:
            if m.group(1) != "note":
                in_error = m.group(1) in ("error", "fatal error")
            keep = in_error and (m.group(1) != "note" or str(SHIM_DIR) not in line)
        elif re.match(r"^(In file included from|\d+ (warnings? and \d+ )?errors? generated)", line):
            keep = "generated" in line
        if keep:
            out.append(line)
    return "\n".join(out) or stderr.strip()


# ---- execution ------------------------------------------------------------------------------------

# position attributes: per component (x, y, z), or one value
_GRID = {"threadgroup_position_in_grid": "blockIdx.{c}", "thread_position_in_threadgroup": "threadIdx.{c}",
         "thread_position_in_grid": "(blockIdx.{c} * blockDim.{c} + threadIdx.{c})",
         "threads_per_threadgroup": "blockDim.{c}", "threadgroups_per_grid": "gridDim.{c}",
         "threads_per_grid": "(gridDim.{c} * blockDim.{c})"}
_LINEAR = "(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z))"
_SCALAR = {"thread_index_in_threadgroup": _LINEAR, "thread_index_in_simdgroup": "qc_shim::lane()",
           "simdgroup_index_in_threadgroup": f"({_LINEAR} / 32)",
           "simdgroups_per_threadgroup": "((blockDim.x * blockDim.y * blockDim.z + 31) / 32)",
           "threads_per_simdgroup": "32", "thread_execution_width": "32"}

_KERNEL = re.compile(r"\bkernel\s+void\s+(\w+)\s*\(")
_PARAM = re.compile(r"(?P<decl>.*?)(?P<name>\b\w+)\s*\[\[\s*(?P<attr>\w+)\s*(?:\(\s*(?P<index>\d+)\s*\))?\s*\]\]",
                    re.S)
_SHARED_LINE = re.compile(r"^[ \t]*threadgroup\b", re.M)
_SHARED_DECL = re.compile(r"threadgroup\s+(?P<type>\w+)\s+\w+\s*(?P<dims>(?:\[[^\]]+\]\s*)*);")


@dataclass
class _Kernel:
    name: str
    line: int
    args: list[str] = field(default_factory=list)      # the thunk's argument per parameter
    buffers: int = 0
    args_type: str | None = None                        # the `constant T&` parameter's T
    shared: list[str] = field(default_factory=list)     # sizeof(...) of each threadgroup array


def _strip_comments(text: str) -> str:
    """Comments blanked (same offsets and lines), so parsing sees only code."""
    return re.sub(r"//[^\n]*|/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)


def _closing(code: str, start: int, open_: str, close: str) -> int:
    """The index of the bracket closing the one at `start`."""
    depth = 0
    for i in range(start, len(code)):
        depth += (code[i] == open_) - (code[i] == close)
        if depth == 0:
            return i
    raise MetalShimError(f"unbalanced '{open_}' at offset {start}", hint=_HINT)


def _split_params(text: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [p.strip() for p in parts + [text[start:]] if p.strip()]


def _parse(source: Path, code: str) -> tuple[list[_Kernel], list[int]]:
    """Every kernel's thunk arguments and threadgroup arrays; the offsets of the `threadgroup`
    keywords that declare those arrays."""
    kernels, shared_at = [], []
    for m in _KERNEL.finditer(code):
        line = code.count("\n", 0, m.start()) + 1
        where = f"{source.name}:{line}: kernel {m.group(1)}"
        close = _closing(code, m.end() - 1, "(", ")")
        body = code.index("{", close)
        end = _closing(code, body, "{", "}")
        k = _Kernel(m.group(1), line)
        pointers, refs = {}, []
        for param in _split_params(code[m.end():close]):
            p = _PARAM.fullmatch(param)
            if not p:
                raise MetalShimError(f"{where}: cannot read parameter '{param}' (no [[attribute]])", hint=_HINT)
            decl, attr = p.group("decl").strip(), p.group("attr")
            words = set(re.findall(r"\w+", decl))
            if words & {"threadgroup", "thread"}:
                raise MetalShimError(f"{where}: parameter '{param}': qc_metal.h binds device and constant buffers "
                                     "only (no threadgroup memory set by the host)", hint=_HINT)
            if attr == "buffer" and decl.endswith("*"):
                pointers[int(p.group("index"))] = f"({decl})b[{p.group('index')}]"
                k.args.append(pointers[int(p.group("index"))])
            elif attr == "buffer" and decl.endswith("&"):
                refs.append((int(p.group("index")), decl[:-1].strip()))
                k.args.append(f"*({refs[-1][1]}*)a")
            elif attr in _GRID or attr in _SCALAR:
                t = re.fullmatch(r"(?:const\s+)?([a-z]+?)([234]?)", decl)
                if not t or (t.group(2) and attr in _SCALAR):
                    raise MetalShimError(f"{where}: [[{attr}]] on a parameter of type '{decl}'", hint=_HINT)
                if t.group(2):
                    parts = ", ".join(_GRID[attr].format(c=c) for c in "xyz"[:int(t.group(2))])
                    k.args.append(f"{t.group(1)}{t.group(2)}({parts})")
                else:
                    k.args.append(f"({t.group(1)})({_SCALAR[attr] if attr in _SCALAR else _GRID[attr].format(c='x')})")
            else:
                raise MetalShimError(f"{where}: parameter '{param}': the CPU shim does not model [[{attr}]]",
                                     hint=_HINT)
        k.buffers = len(pointers)
        if sorted(pointers) != list(range(len(pointers))) or len(refs) > 1 or \
                any(i != len(pointers) for i, _ in refs):
            raise MetalShimError(f"{where}: qc_metal_dispatch binds pointers at [[buffer(0)]], [[buffer(1)]], ... and "
                                 f"at most one `constant T&` after them; this kernel takes buffers "
                                 f"{sorted(pointers)} and references at {[i for i, _ in refs]}", hint=_HINT)
        k.args_type = refs[0][1] if refs else None
        for s in _SHARED_LINE.finditer(code, body, end):
            at = code.index("threadgroup", s.start())
            d = _SHARED_DECL.match(code, at)
            if not d:
                raise MetalShimError(f"{source.name}:{code.count(chr(10), 0, at) + 1}: a threadgroup declaration the "
                                     f"CPU shim cannot share between threads: "
                                     f"'{code[at:code.find(';', at) + 1]}' (expected `threadgroup T name[N];`)",
                                     hint=_HINT)
            k.shared.append(f"sizeof({d.group('type')}{d.group('dims')})")
            shared_at.append(at)
        kernels.append(k)
    return kernels, shared_at


def execution_source(source: Path) -> str:
    """The MSL as C++ to run on the CPU: threadgroup arrays become static storage of the OS thread
    (shared by a threadgroup's fibers; one threadgroup runs at a time), then a thunk per kernel and
    the qc_metal_kernels table (metal_shim/qc_metal_kernels.h). Lines keep their numbers in the
    MSL file, so compiler errors and the barrier checks name the MSL's lines."""
    text = source.read_text()
    kernels, shared_at = _parse(source, _strip_comments(text))
    for at in reversed(shared_at):
        text = text[:at] + "static thread_local" + text[at + len("threadgroup"):]
    out = ['#include "qc_metal_kernels.h"', f'#line 1 "{source}"', text, "", "// ---- qcompile.testing.metal_cpu"]
    for i, k in enumerate(kernels):
        out += [f"static void qc_thunk_{i}(void* const* b, const void* a) {{", "  (void)b; (void)a;",
                f"  {k.name}({', '.join(k.args)});", "}"]
    rows = [f'  {{"{k.name}", qc_thunk_{i}, {k.buffers}, {f"sizeof({k.args_type})" if k.args_type else 0}, '
            f'{" + ".join(k.shared) or 0}}},' for i, k in enumerate(kernels)]
    out += ["extern \"C\" const qc_metal_kernel qc_metal_kernels[] = {", *(rows or ["  {nullptr, nullptr, 0, 0, 0},"]),
            "};", f'extern "C" const int qc_metal_num_kernels = {len(kernels)};', ""]
    return "\n".join(out)


def _gxx(source: Path, out: Path, *flags: str) -> Path:
    cxx = os.environ.get("CXX", "g++")
    if not shutil.which(cxx):
        raise MetalShimError(f"running MSL on the CPU needs a C++17 compiler; '{cxx}' is not installed",
                             hint="install g++ (apt-get install g++) or set CXX")
    # -O1: the generated files are large and mostly straight-line; -O2 adds compile time, not
    # coverage. -fno-strict-aliasing: MSL reads float arrays through float4 pointers.
    cmd = [cxx, "-std=c++17", "-O1", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing", f"-I{SHIM_DIR}",
           *(f"-I{d}" for d in include_dirs()), *flags, "-c", str(source), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise MetalShimError(f"compiling {source} for the CPU shim failed ({cxx} exited {proc.returncode}):\n"
                             f"{proc.stderr.strip()[:4000]}", hint=_HINT)
    return out


def compile_kernels(source: Path, out: Path) -> Path:
    """The MSL file -> an object with its kernels, their thunks and the qc_metal_kernels table
    (its C++ is written beside `out`, as <stem>.cpp)."""
    source, out = Path(source).resolve(), Path(out)
    cpp = out.with_suffix(".cpp")
    cpp.write_text(execution_source(source))
    return _gxx(cpp, out, "-DQC_METAL_EXEC", "-x", "c++")


def runtime_objects(folder: Path) -> list[Path]:
    """qc_metal.h on the CPU and the shim's scheduler, compiled into `folder`: link them with the
    kernels' object and a host that calls qc_metal_*."""
    return [_gxx(SHIM_DIR / "qc_metal_cpu.cpp", Path(folder) / "qc_metal_cpu.o"),
            _gxx(CUDA_SHIM_DIR / "cuda_shim.cpp", Path(folder) / "cuda_shim.o")]


def link_on_cpu(folder: Path, prefix: str, out: Path) -> Path:
    """The sources folder of a Metal build (`<out>/<prefix>_metal`) -> `out`, a host .so whose MSL
    kernels run on the CPU.

    The folder holds kernels.metal, kernels_host.mm (the launchers: C++ calling qc_metal.h),
    `<prefix>_exec.c` and the weights (weights.bin; its weights.S is Mach-O, so an ELF one is
    written here). The metallib is not needed: its symbols, where the executor names them, become
    an empty blob. The loader finds the symbol prefix in `<stem>.manifest.json` next to the
    library: the build's manifest (beside the folder) is copied there."""
    folder, out = Path(folder).resolve(), Path(out).resolve()
    missing = [n for n in ("kernels.metal", "kernels_host.mm", f"{prefix}_exec.c", "qc_runtime.c", "weights.bin")
               if not (folder / n).exists()]
    if missing:
        raise MetalShimError(f"{folder} lacks {', '.join(missing)}: not the sources folder of a Metal build "
                             f"with prefix '{prefix}'", phase="options",
                             hint="pass the folder a --target metal build writes: <out>/<prefix>_metal")
    executor = folder / f"{prefix}_exec.c"
    runtime_c = folder / "qc_runtime.c"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qc_metal_cpu_") as tmp:
        tmp = Path(tmp)
        asm = [tmp / "weights.S"]               # the assembler runs in `folder`, where weights.bin is
        asm[0].write_text(codegen.weights_asm(prefix, folder / "weights.bin", macho=False))
        blob = sorted(set(re.findall(rf"\b{re.escape(prefix)}_metallib\w*", executor.read_text())))
        if blob:                                # every symbol at one address: an empty metallib
            asm.append(tmp / "metallib.S")
            asm[-1].write_text(f'  .section .rodata.{prefix}_metallib,"a"\n  .balign 16\n'
                               + "".join(f"  .globl {s}\n  .hidden {s}\n{s}:\n" for s in blob)
                               + '  .zero 16\n  .section .note.GNU-stack,"",@progbits\n')
        objects = [compile_kernels(folder / "kernels.metal", tmp / "kernels.o"),
                   _gxx(folder / "kernels_host.mm", tmp / "kernels_host.o", "-x", "c++"), *runtime_objects(tmp)]
        try:
            link.link_shared(out, objects, [executor, runtime_c], asm, prefix, Toolchain(("gcc",), "linux-gnu"),
                             cflags=["-DQC_METAL"], libs=["-lstdc++"])
        except link.LinkError as exc:
            raise MetalShimError(f"linking {out.name} from {folder} with the CPU shim failed: {exc.message}",
                                 phase="link", hint=_HINT) from None
    copy_manifest(folder.parent / f"{prefix}.manifest.json", out)
    return out
