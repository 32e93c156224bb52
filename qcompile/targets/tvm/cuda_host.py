"""The host half of a CUDA kernel: C++ that launches its device kernels, read from the lowered IR.

TVM's own host code for a GPU kernel calls into the TVM runtime (module loading, stream lookup);
an artifact has no TVM at run time. So each PrimFunc becomes a launcher with the CPU kernels'
calling convention (TVM FFI packed arguments: DLTensors, then int64 scalars), and the executor
calls it exactly as it calls a CPU kernel. What a launcher does is what the lowered host function
does: bind shape variables, evaluate let-bound values, launch each device kernel with its grid and
block dims (trailing arguments of `call_ffi_kernel`, in `launch_params` order) and its arguments
in the device function's order (TVM sorts them by name, not as the PrimFunc lists them).

Launches go through QC_LAUNCH, which is `<<<>>>` under nvcc and a plain call under the CPU shim
(qcompile/testing/cuda_shim.h), so the same launcher source runs on the GPU and in CI.
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import tirx

from ..plan import LoweringError

_BIN = {tirx.Add: "+", tirx.Sub: "-", tirx.Mul: "*", tirx.Div: "/", tirx.Mod: "%", tirx.EQ: "==", tirx.NE: "!=",
        tirx.LT: "<", tirx.LE: "<=", tirx.GT: ">", tirx.GE: ">=", tirx.And: "&&", tirx.Or: "||"}
_CALL_HELPERS = {tirx.FloorDiv: "qc_floordiv", tirx.FloorMod: "qc_floormod", tirx.Min: "qc_min", tirx.Max: "qc_max"}
_C_INT = {"int64": "int64_t", "int32": "int32_t", "bool": "bool", "int16": "int16_t", "int8": "int8_t",
          "uint8": "uint8_t", "uint32": "uint32_t", "uint64": "uint64_t"}


@dataclass
class Launcher:
    name: str                    # the PrimFunc (the executor's kernel symbol)
    body: list[str]              # C++ statements: bindings, workspace allocations, launches
    workspaces: list[str]        # device buffers allocated by `body`, freed after the last launch
    kernels: list[str]           # the __global__ functions it launches, in order


class _Emitter:
    """Translates the host function's straight-line code to C++ statements, in order."""

    def __init__(self, func_name: str, known: dict[str, str], handles: dict[str, str]):
        self.func = func_name
        self.handles = handles       # buffer name -> C expression of its device pointer
        self.lets: dict[str, object] = {}
        self.body = [f"const int64_t {_ident(n)} = {e};" for n, e in known.items()]
        self.bound = {n: _ident(n) for n in known}
        self.workspaces: list[str] = []
        self.kernels: list[str] = []

    def _bug(self, what: str) -> LoweringError:
        return LoweringError(f"kernel {self.func}: {what}", phase="lower", hint="this is a qcompile bug; please report it")

    def var(self, v) -> str:
        name = v.name
        if name not in self.bound:
            if name not in self.lets:
                raise self._bug(f"its launch uses '{name}', which the launcher cannot compute")
            c = self.expr(self.lets[name])
            self.bound[name] = _ident(name)
            self.body.append(f"const int64_t {_ident(name)} = {c};")
        return self.bound[name]

    def expr(self, e) -> str:
        if isinstance(e, tirx.IntImm):
            return f"(int64_t){int(e.value)}" if str(e.ty) != "bool" else ("true" if e.value else "false")
        if isinstance(e, tirx.Var):
            return self.var(e)
        if type(e) in _BIN:
            return f"({self.expr(e.a)} {_BIN[type(e)]} {self.expr(e.b)})"
        if type(e) in _CALL_HELPERS:
            return f"{_CALL_HELPERS[type(e)]}({self.expr(e.a)}, {self.expr(e.b)})"
        if isinstance(e, tirx.Not):
            return f"(!{self.expr(e.a)})"
        if isinstance(e, tirx.Cast) and str(e.ty) in _C_INT:
            return f"(({_C_INT[str(e.ty)]}){self.expr(e.value)})"
        if isinstance(e, tirx.Select):
            return f"({self.expr(e.condition)} ? {self.expr(e.true_value)} : {self.expr(e.false_value)})"
        raise self._bug(f"a launch argument uses {type(e).__name__} ({e}), which the CUDA launcher does not translate")

    def arg(self, e) -> str:
        if _is_data(e):
            name = e.args[0].name
            if name not in self.handles:
                raise self._bug(f"device pointer '{name}.data' is not one of its tensors or workspaces")
            return f"qc_any_ptr{{{self.handles[name]}}}"
        return self.expr(e)

    def bind(self, var, value) -> None:
        if _is_data(value):          # a view: same data, another name
            if value.args[0].name in self.handles:
                self.handles.setdefault(var.name, self.handles[value.args[0].name])
        elif var.name not in self.bound:
            self.lets[var.name] = value

    def alloc(self, buf) -> None:
        """A global intermediate between device kernels: stream-ordered device memory."""
        n = "".join(f" * {self.expr(d)}" for d in buf.shape)
        local = f"ws_{len(self.workspaces)}"
        bits = tvm.runtime.DataType(str(buf.dtype)).bits
        self.body.append(f"{local} = qc_cuda_workspace((size_t)((int64_t){max(bits // 8, 1)}{n}));")
        self.body.append(f'if (!{local}) {{ status = qc_fail("{self.func}: no device memory for its workspace '
                         f'{buf.name}"); goto done; }}')
        self.workspaces.append(local)
        self.handles[buf.name] = local

    def launch(self, call, device_params) -> None:
        kernel, args, grid, block, shared = self.launch_dims(call, device_params)
        self.kernels.append(kernel)
        self.body += [
            "{",
            f"  const int64_t g[3] = {{{', '.join(grid)}}}, b[3] = {{{', '.join(block)}}};",
            "  if (g[0] > 0 && g[1] > 0 && g[2] > 0) {",
            f"    QC_LAUNCH({kernel}, dim3((unsigned)g[0], (unsigned)g[1], (unsigned)g[2]), "
            f"dim3((unsigned)b[0], (unsigned)b[1], (unsigned)b[2]), (size_t)({shared}), {', '.join(args)});",
            f'    if (qc_launch_failed("{kernel}", g, b)) {{ status = -1; goto done; }}',
            "  }",
            "}",
        ]

    def launch_dims(self, call, device_params):
        """(device kernel, its arguments as C, grid dims, block dims, dynamic shared bytes)."""
        kernel = call.args[0].value
        rest = list(call.args[1:])
        n = len(device_params[kernel])
        args = [self.arg(v) for v in rest[:n]]
        grid, block, shared = ["1"] * 3, ["1"] * 3, "0"
        for tag, d in zip((str(t) for t in call.attrs.launch_params), rest[n:]):
            c = self.expr(d)
            if tag.startswith("blockIdx."):
                grid["xyz".index(tag[-1])] = c
            elif tag.startswith("threadIdx."):
                block["xyz".index(tag[-1])] = c
            elif tag == "tirx.use_dyn_shared_memory":
                shared = c
            else:
                raise self._bug(f"launch parameter '{tag}' is not supported")
        return kernel, args, grid, block, shared


def _is_data(e) -> bool:
    return isinstance(e, tvm.ir.Call) and e.op.name == "tirx.buffer_data"


def _ident(name: str) -> str:
    return "v_" + "".join(c if c.isalnum() else "_" for c in name)


def _walk(stmt, em: _Emitter, device_params, launches_allowed=True):
    if stmt is None:
        return
    if isinstance(stmt, tirx.SeqStmt):
        for s in stmt.seq:
            _walk(s, em, device_params, launches_allowed)
    elif isinstance(stmt, (tirx.Bind, tirx.LetStmt)):
        if launches_allowed:
            em.bind(stmt.var, stmt.value)
        _walk(getattr(stmt, "body", None), em, device_params, launches_allowed)
    elif isinstance(stmt, tirx.AttrStmt):
        _walk(stmt.body, em, device_params, launches_allowed)
    elif isinstance(stmt, tirx.IfThenElse):      # argument checks: nothing to launch in there
        _walk(stmt.then_case, em, device_params, False)
        _walk(stmt.else_case, em, device_params, False)
    elif isinstance(stmt, tirx.DeclBuffer):
        if _is_data(stmt.data):
            em.bind(stmt.buffer, stmt.data)
    elif isinstance(stmt, tirx.AllocBuffer):
        if not launches_allowed:
            raise em._bug("allocates device memory under a condition, which the CUDA launcher does not translate")
        em.alloc(stmt.buffer)
    elif isinstance(stmt, tirx.Evaluate):
        call = stmt.value
        if isinstance(call, tvm.ir.Call) and getattr(call.op, "name", "") == "tirx.call_ffi_kernel":
            if not launches_allowed:
                raise em._bug(f"launches {call.args[0].value} under a condition, which the CUDA launcher does not "
                              f"translate")
            em.launch(call, device_params)
    elif isinstance(stmt, (tirx.AssertStmt, tirx.Return)):
        pass
    else:
        raise em._bug(f"its host code has a {type(stmt).__name__}, which the CUDA launcher does not translate")


def launcher(name: str, original, host_func, device_params: dict[str, list], emitter=_Emitter) -> Launcher:
    """`original`: the kernel's PrimFunc as the executor calls it (DLTensors, then int64 scalars);
    `host_func`: its host half after TVM's split; device_params: __global__ name -> parameters."""
    known, handles = {}, {}
    for i, p in enumerate(original.params):
        if isinstance(p.ty, tirx.BufferType):
            tensor = f"((const DLTensor*)args[{i}].v_ptr)"
            handles[p.name] = f"{tensor}->data"
            for d, extent in enumerate(p.shape):
                if isinstance(extent, tirx.Var) and extent.name not in known:
                    known[extent.name] = f"{tensor}->shape[{d}]"
        else:
            known[p.name] = f"args[{i}].v_int64"
    em = emitter(name, known, handles)
    _walk(host_func.body, em, device_params)
    if not em.kernels:
        raise em._bug("its host code launches no device kernel")
    return Launcher(name, em.body, em.workspaces, em.kernels)


PRELUDE = r"""
#include <stdint.h>
#include <stdio.h>
#include <tvm/ffi/c_api.h>
#ifndef QC_CUDA_SHIM
#include <cuda_runtime.h>
#define QC_LAUNCH(kernel, grid, block, shared, ...) kernel<<<grid, block, shared>>>(__VA_ARGS__)
#endif
#define QC_LAUNCHER __attribute__((visibility("hidden")))

extern "C" void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** parts, int32_t n);

/* A device pointer that converts to the kernel parameter's element type. */
struct qc_any_ptr {
  void* p;
  template <class T> operator T*() const { return (T*)p; }
};
static inline int64_t qc_floordiv(int64_t a, int64_t b) { int64_t q = a / b; return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q; }
static inline int64_t qc_floormod(int64_t a, int64_t b) { int64_t r = a % b; return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r; }
static inline int64_t qc_min(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t qc_max(int64_t a, int64_t b) { return a > b ? a : b; }

static int qc_fail(const char* msg) {
  const char* parts[1] = {msg};
  TVMFFIErrorSetRaisedFromCStrParts("RuntimeError", parts, 1);
  return -1;
}

/* Launches go on the default stream, as do the executor's copies: each step sees the last one's results. */
static int qc_launch_failed(const char* kernel, const int64_t* g, const int64_t* b) {
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return 0;
  char msg[320];
  snprintf(msg, sizeof msg, "launching %s<<<(%lld,%lld,%lld), (%lld,%lld,%lld)>>> failed: %s", kernel,
           (long long)g[0], (long long)g[1], (long long)g[2], (long long)b[0], (long long)b[1], (long long)b[2],
           cudaGetErrorString(err));
  qc_fail(msg);
  return 1;
}

/* Intermediates between the device kernels of one step: stream-ordered, so the pool reuses them. */
static void* qc_cuda_workspace(size_t bytes) {
  void* p = NULL;
  return cudaMallocAsync(&p, bytes ? bytes : 1, 0) == cudaSuccess ? p : NULL;
}
static void qc_cuda_workspace_free(void* p) {
  if (p) cudaFreeAsync(p, 0);
}
"""


def function(ln: Launcher, declare: list[str] = (), release: list[str] = ()) -> list[str]:
    """A launcher as the executor calls a kernel (TVM FFI's packed convention): its body between
    `declare` and, at `done:` (where a failed launch jumps), `release`."""
    return [f'extern "C" QC_LAUNCHER int __tvm_ffi_{ln.name}(void* self, const TVMFFIAny* args, int32_t num_args, '
            f'TVMFFIAny* result) {{',
            "  (void)self; (void)num_args; (void)result;",
            "  int status = 0;",
            *(f"  {line}" for line in declare),
            "  {", *(f"    {line}" for line in ln.body), "  }",
            "done:",
            *(f"  {line}" for line in release),
            "  return status;", "}", ""]


def render(launchers: list[Launcher]) -> str:
    """C++ for every launcher (appended to TVM's device source in one .cu file)."""
    out = [PRELUDE]
    for ln in launchers:
        out += function(ln, [f"void* {w} = NULL;" for w in ln.workspaces],
                        [f"qc_cuda_workspace_free({w});" for w in ln.workspaces])
    return "\n".join(out)
