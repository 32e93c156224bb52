"""The host half of a Metal kernel: C++ launchers that dispatch its MSL kernels through the Metal
runtime (qcompile/artifact/runtime/qc_metal.h), read from the lowered IR like CUDA's.

The walk over TVM's host function is cuda_host's; only a launch and a workspace read differently.
TVM's Metal codegen binds a kernel's pointer parameters to [[buffer(0)]], [[buffer(1)]], ... in
the device function's order and packs its scalar parameters, in order, into one struct at the
next index; a dispatch passes exactly that (buffers by CPU pointer: the runtime finds their
MTLBuffer), with threadgroups per grid and threads per threadgroup from `call_ffi_kernel`.
The launchers are plain C++ (they compile as Objective-C++ on a Mac and as C++ in the tests'
CPU shim); the kernel names' table and its loader close the file.
"""

from __future__ import annotations

import tvm

from . import cuda_host

_C_SCALAR = {"int64": "int64_t", "int32": "int32_t", "uint32": "uint32_t", "float32": "float", "bool": "bool",
             "int16": "int16_t", "int8": "int8_t", "uint8": "uint8_t", "float16": "uint16_t"}


class MetalEmitter(cuda_host._Emitter):
    def __init__(self, func_name: str, known: dict[str, str], handles: dict[str, str], kernel_index: dict[str, int],
                 param_types: dict[str, list[str]]):
        super().__init__(func_name, known, handles)
        self.kernel_index = kernel_index    # device kernel -> its dispatch index (the names table's order)
        self.param_types = param_types      # device kernel -> per parameter, "handle" or the scalar's dtype

    def arg(self, e) -> str:
        if cuda_host._is_data(e):
            return "(void*)" + super().arg(e).removeprefix("qc_any_ptr{").removesuffix("}")
        return self.expr(e)

    def alloc(self, buf) -> None:
        """An intermediate between dispatches: the run's workspace, released when it completes."""
        n = "".join(f" * {self.expr(d)}" for d in buf.shape)
        local = f"ws_{len(self.workspaces)}"
        bits = tvm.runtime.DataType(str(buf.dtype)).bits
        self.body.append(f"void* {local} = qc_metal_workspace((size_t)((int64_t){max(bits // 8, 1)}{n}));")
        self.body.append(f'if (!{local}) {{ status = qc_fail(qc_metal_error()); goto done; }}')
        self.handles[buf.name] = local

    def launch(self, call, device_params) -> None:
        kernel, args, grid, block, _ = self.launch_dims(call, device_params)
        types = self.param_types[kernel]
        buffers = [a for a, t in zip(args, types) if t == "handle"]
        scalars = [(a, t) for a, t in zip(args, types) if t != "handle"]
        self.kernels.append(kernel)
        # TVM's struct gives every scalar 8 bytes: a 32-bit one is `int n[2]`, read as n[0]
        fields = " ".join(f"{_C_SCALAR[t]} a{i}{'' if _bits(t) == 64 else '[2]'};" for i, (_, t) in enumerate(scalars))
        self.body += [
            "{",
            f"  const int64_t g[3] = {{{', '.join(grid)}}}, b[3] = {{{', '.join(block)}}};",
            "  if (g[0] > 0 && g[1] > 0 && g[2] > 0) {",
            f"    void* const buffers[{max(len(buffers), 1)}] = {{{', '.join(buffers) or 'NULL'}}};",
            *([f"    const struct {{ {fields} }} scalars = {{{', '.join(_init(a, t) for a, t in scalars)}}};"]
              if scalars else []),
            f"    if (qc_metal_dispatch({self.kernel_index[kernel]} /* {kernel} */, g, b, {len(buffers)}, buffers, "
            f"{'&scalars, sizeof scalars' if scalars else 'NULL, 0'})) "
            "{ status = qc_fail(qc_metal_error()); goto done; }",
            "  }",
            "}",
        ]


def _bits(dtype: str) -> int:
    return tvm.runtime.DataType(dtype).bits


def _init(value: str, dtype: str) -> str:
    cast = f"({_C_SCALAR[dtype]})({value})"
    if _bits(dtype) > 64 or (_bits(dtype) < 32 and dtype != "bool"):
        raise NotImplementedError(f"a {dtype} scalar argument")    # TVM passes int64/int32/float32 shape values
    return cast if _bits(dtype) == 64 else f"{{{cast}, 0}}"


PRELUDE = r"""
#include <stdint.h>
#include <stdio.h>
#include <tvm/ffi/c_api.h>
#include "qc_metal.h"
#define QC_LAUNCHER __attribute__((visibility("hidden")))

extern "C" void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n);

[[maybe_unused]] static inline int64_t qc_floordiv(int64_t a, int64_t b) { int64_t q = a / b; return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q; }
[[maybe_unused]] static inline int64_t qc_floormod(int64_t a, int64_t b) { int64_t r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
[[maybe_unused]] static inline int64_t qc_min(int64_t a, int64_t b) { return a < b ? a : b; }
[[maybe_unused]] static inline int64_t qc_max(int64_t a, int64_t b) { return a > b ? a : b; }

static int qc_fail(const char* msg) {
  const char* parts[1] = {msg};
  TVMFFIErrorSetRaisedFromCStrParts("RuntimeError", parts, 1);
  return -1;
}
"""


def render(launchers: list, kernel_names: list[str]) -> str:
    """C++ for every launcher, then the table of MSL kernel names (the order of dispatch indices)
    and `qc_metal_load_kernels`, which the executor calls once with the embedded metallib."""
    out = [PRELUDE]
    for ln in launchers:
        out += cuda_host.function(ln)      # workspaces: released with the run (qc_metal_end)
    out.append(f"static const char* const QC_METAL_KERNELS[{max(len(kernel_names), 1)}] = {{")
    out += [f'  "{k}",' for k in kernel_names] or ["  NULL,"]
    out.append("};")
    out.append('extern "C" QC_LAUNCHER int qc_metal_load_kernels(const void* metallib, size_t bytes) {')
    out.append(f"  return qc_metal_open(QC_METAL_KERNELS, {len(kernel_names)}, metallib, bytes);")
    out.append("}")
    return "\n".join(out) + "\n"
