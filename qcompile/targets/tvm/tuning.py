"""What `qcompile tune` needs from TVM: the tunable workloads of a plan, a candidate's build (in a
worker process) and its measurement (through a TVM RPC session: local, or a remote device).

A workload is one kernel of the plan, named by what it computes (op, shapes, formats), not by
the model it came from, so records carry over between models.  A candidate is a workload plus
schedule parameters (qcompile/tune/space.py); its library is the kernel alone, exported by TVM
with the C micro-kernels linked in, and is timed with TVM's time_evaluator on the target.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tvm import te, tirx

from ...ir import dims
from ...tune.space import FAMILY_OF_KIND, Space, space_for
from ...tune import keys
from ..qlinear_layout import Q_RANGE, pack_qlinear
from . import extern_ops
from .kernels import Kernel, _te_dtype
from .schedules import schedule


@dataclass
class Workload:
    key: str                     # exact identity, readable
    cls: str                     # what nearest-shape matching compares within
    dims: list[int]              # the shape it is compared by
    family: str                  # search-space family
    shape: dict                  # what the space's constraints read
    kernel: str                  # the kernel's name in this build
    uses: int                    # plan steps that launch it
    args: list[dict]             # per argument at the bound dims: shape and dtype, or a scalar value
    bytes: int                   # bytes read and written per call at the bound dims
    ops: int                     # multiply-adds x 2 (linear kernels), else 0
    base: Kernel                 # the kernel as built (default layout)
    outputs: list[int] = field(default_factory=list)   # which arrays the kernel writes (checked)
    qlinear: dict | None = None  # attrs of a QLinearPacked (its layout is a parameter)

    @property
    def space(self) -> Space:
        return space_for(self.family, self.shape)

    def kernel_for(self, params: dict) -> Kernel:
        """The unscheduled kernel a candidate compiles (a layout parameter changes its buffers)."""
        if self.qlinear and params.get("tiles", self.qlinear["tiles"]) != self.qlinear["tiles"]:
            return _qlinear_kernel(self.base.name, self.qlinear, params["tiles"])
        return self.base

    def arg_arrays(self, params: dict, seed: int) -> list:
        return _arrays(self, params, seed)


def describe(g, step, kernel: Kernel) -> Workload | None:
    """The workload a kernel is tuned and looked up as (None: no tunable template)."""
    op = step.node.op_id
    if op == "qcompile.QLinearPacked":
        at = step.node.attrs
        info = {"family": at["family"], "bits": int(at["bits"]), "group": int(at["group"]), "K": int(at["K"]),
                "N": int(at["N"]), "tiles": int(at["tiles"]), "lead": list(g.values[step.inputs[0]].shape[:-1])}
        key, cls, dm = keys.qlinear(info["family"], info["group"], info["K"], info["N"], info["lead"])
        return Workload(key, cls, dm, "qlinear", {"N": info["N"]}, kernel.name, 0, [], 0, 0, kernel,
                        outputs=[-1], qlinear=info)
    family = FAMILY_OF_KIND.get(kernel.kind)
    if family is None:
        return None
    if family == "gemm":
        panels, k, panel = g.values[step.inputs[1]].shape
        wdt = _dtype(g, step.inputs[1])
        return Workload(f"{kernel.kind}:{wdt}:K{k}:N{panels * panel}:P{panel}", f"{kernel.kind}:{wdt}",
                        [k, panels * panel], "gemm", {"K": k, "panel": panel}, kernel.name, 0, [], 0, 0, kernel,
                        outputs=[2])
    out_shape = g.values[step.outputs[0]].shape
    inner = out_shape[-1] if out_shape else 1
    shape = {"inner": inner if isinstance(inner, int) and len(out_shape) > 1 else 0,
             "dynamic_inner": not isinstance(inner, int)}
    static = [d for d in out_shape if isinstance(d, int)]
    names = step.inputs + step.outputs
    sig = ",".join(f"{_dtype(g, x)}{list(g.values[x].shape)}".replace(" ", "") for x in names)
    digest = hashlib.sha256(kernel.func.without_attr("global_symbol").script().encode()).hexdigest()[:12]
    members = "+".join(n.op_id for n, _ in step.group) if step.group else op
    return Workload(f"{kernel.kind}:{members}:{sig}:{digest}", f"{kernel.kind}:{members}", static, family, shape,
                    kernel.name, 0, [], 0, 0, kernel, outputs=list(range(len(step.inputs), len(names))))


def extract(plan, kernels: dict[str, Kernel], bind: dict[str, int]) -> tuple[list[Workload], list[str]]:
    """The tunable workloads of a plan, with their arguments at the bound symbolic dims, and why
    the other kernels are not tuned."""
    g = plan.graph
    first, uses = kernel_steps(plan)
    out, skipped = [], []
    for name, kernel in kernels.items():
        step = first.get(name)
        if step is None:
            continue
        w = describe(g, step, kernel)
        if w is None:
            skipped.append(f"{name} ({step.node.op_id}, {kernel.kind}): no tunable template")
            continue
        try:
            _bind_args(w, g, step, kernel, dict(bind))
        except _NotTunable as why:
            skipped.append(f"{name} ({step.node.op_id}): {why}")
            continue
        w.uses = uses[name]
        out.append(w)
    return out, skipped


def kernel_steps(plan) -> tuple[dict, dict[str, int]]:
    """kernel -> the first plan step that launches it, and kernel -> how many steps do."""
    first: dict[str, object] = {}
    uses: dict[str, int] = {}
    for step in plan.steps:
        for k in filter(None, (step.kernel, step.tail_kernel)):
            first.setdefault(k, step)
            uses[k] = uses.get(k, 0) + 1
    return first, uses


class _NotTunable(Exception):
    pass


def _shape(g, name, env) -> list[int]:
    return [int(dims.evaluate(d, env)) for d in g.values[name].shape]


def _dtype(g, name) -> str:
    return _te_dtype(g.values[name].dtype)


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * (2 if dtype == "bfloat16" else np.dtype(dtype).itemsize)


def _bind_args(w: Workload, g, step, kernel: Kernel, env: dict) -> None:
    if w.qlinear:
        info = w.qlinear
        rows = int(np.prod([dims.evaluate(d, env) for d in info["lead"]], dtype=np.int64))
        if rows == 0:
            raise _NotTunable("empty at these dims")
        info["bind"] = {s: int(env[s]) for s in sorted(dims.symbols_of(info["lead"]))}
        k, n = info["K"], info["N"]
        w.bytes = k * n * info["bits"] // 8 + rows * k + rows * n * 4 + (k // info["group"]) * n * 4
        w.ops = 2 * rows * n * k
        return
    if w.family == "gemm":
        a = step.inputs[0]
        panels, k, panel = g.values[step.inputs[1]].shape
        n = panels * panel
        rows = int(np.prod(_shape(g, a, env)[:-1], dtype=np.int64))
        tail = kernel.name.endswith("_tail")
        m = rows % step.row_block if tail else rows - rows % step.row_block
        if m == 0:
            raise _NotTunable(f"no rows for the {'tail' if tail else 'main'} GEMM kernel at these dims")
        w.args = [{"shape": [m, k], "dtype": _dtype(g, a)},
                  {"shape": [panels, k, panel], "dtype": _dtype(g, step.inputs[1])},
                  {"shape": [m, n], "dtype": _dtype(g, step.outputs[0])}]
        if not tail:
            w.args.append({"scalar": m // step.row_block})
        w.ops = 2 * m * n * k
    else:
        w.args = [{"shape": _shape(g, x, env), "dtype": _dtype(g, x)} for x in step.inputs + step.outputs]
        w.args += [{"scalar": int(env[s])} for s in kernel.scalars]
    if any(0 in a.get("shape", [1]) for a in w.args):
        raise _NotTunable("empty at these dims")
    sized = [a for a in w.args if "shape" in a]
    if step.node.op_id == "Gather" and not step.group:     # reads only the gathered rows of its table
        sized = sized[1:] + sized[-1:]
    w.bytes = sum(_nbytes(a["shape"], a["dtype"]) for a in sized)


def _qlinear_kernel(name: str, info: dict, tiles: int) -> Kernel:
    """A QLinearPacked kernel for another panel width (its scales and zero points change shape)."""
    env = {s: tirx.Var(s, "int64") for s in sorted(dims.symbols_of(info["lead"]))}
    lead = [tirx.const(d, "int64") if isinstance(d, int) else env[d] for d in info["lead"]]
    k, n, group = info["K"], info["N"], info["group"]
    c = lambda *v: [tirx.const(x, "int64") for x in v]      # noqa: E731 (shapes as the build's, int64)
    panels, ng = n // (16 * tiles), k // group
    ph = [te.placeholder(lead + c(k), "int8", name="in0"), te.placeholder(lead + c(1), "float32", name="in1"),
          te.placeholder(lead + c(ng), "int32", name="in2"),
          te.placeholder(c(k * n * info["bits"] // 8), "uint8", name="in3"),
          te.placeholder(c(panels, ng, 16 * tiles), "float32", name="in4")]
    if info["family"] == "uint4":
        ph.append(te.placeholder(c(panels, ng, 16 * tiles), "uint8", name="in5"))
    if info["family"] == "int8":
        ph.append(te.placeholder(c(panels, 16 * tiles), "int32", name="in5"))
    data = ph if info["family"] != "int8" else ph[:5] + [None, ph[5]]
    node = _Attrs({"family": info["family"], "bits": info["bits"], "group": group, "K": k, "N": n, "tiles": tiles})
    out = extern_ops.qlinear_packed(node, data, [lead + c(n)], ["float32"])
    func = te.create_prim_func(ph + out).with_attr("global_symbol", name)
    return Kernel(name, func, "extern", [])


@dataclass
class _Attrs:
    attrs: dict


def _arrays(w: Workload, params: dict, seed: int) -> list:
    rng = np.random.default_rng(seed)
    if w.qlinear:
        return _qlinear_arrays(w.qlinear, params.get("tiles", w.qlinear["tiles"]), rng)
    out = []
    for a in w.args:
        if "scalar" in a:
            out.append(a["scalar"])
            continue
        shape, dt = a["shape"], a["dtype"]
        if dt in ("float32", "float64", "float16"):
            arr = rng.standard_normal(shape).astype(dt)
        elif dt == "bfloat16":
            import ml_dtypes
            arr = rng.standard_normal(shape).astype(ml_dtypes.bfloat16)
        elif dt in ("int64", "uint64"):       # indices and positions: zero is always in range
            arr = np.zeros(shape, dt)
        elif dt == "bool":
            arr = rng.integers(0, 2, shape).astype(bool)
        else:
            info = np.iinfo(dt)
            arr = rng.integers(max(info.min, -100), min(info.max, 100) + 1, shape).astype(dt)
        out.append(arr)
    return out


def _qlinear_arrays(info: dict, tiles: int, rng) -> list:
    """Consistent inputs: logical weights packed for `tiles`, activations quantized rows, their sums."""
    k, n, group, fam = info["K"], info["N"], info["group"], info["family"]
    lo, hi = Q_RANGE[fam]
    q = rng.integers(lo, hi + 1, (k, n))
    ng = k // group
    scales = (rng.random((ng, n)) * 0.02 + 0.001).astype(np.float32)
    if fam in ("int8", "ternary"):
        scales = scales[0]
    zp = rng.integers(0, 16, (ng, n)) if fam == "uint4" else None
    p = pack_qlinear(q, fam, scales, zp, group if fam in ("int4", "uint4") else None, tiles)
    lead = [int(dims.evaluate(d, info["bind"])) for d in info["lead"]]
    xq = rng.integers(-127, 128, lead + [k]).astype(np.int8)
    xs = (rng.random(lead + [1]) * 0.05 + 0.01).astype(np.float32)
    xsum = xq.astype(np.int32).reshape(lead + [ng, group]).sum(-1).astype(np.int32)
    arrays = [xq, xs, xsum, p.weights, p.scales]
    if p.zero_points is not None:
        arrays.append(p.zero_points)
    if p.colsum is not None:
        arrays.append(p.colsum)
    return arrays + [np.empty(lead + [n], np.float32)]


def tvm_version() -> str:
    return tvm.__version__


def worker_pool(workers: int, timeout: float):
    """TVM's pool of Popen worker processes: a call that outlives `timeout` or kills its worker
    raises in the caller (TimeoutError or the worker's error), and the worker is replaced."""
    from tvm.support.popen_pool import PopenPoolExecutor
    return PopenPoolExecutor(max_workers=workers, timeout=timeout)


def kernel_json(kernel: Kernel) -> str:
    """A kernel's PrimFunc as text a worker process can load (build_candidate)."""
    return tvm.ir.save_json(kernel.func)


# ---- the worker side: these run in TVM's Popen worker processes (or over RPC) ------------------

def build_candidate(func_json: str, kind: str, panel: int, scalars: list, params: dict, target_spec: dict,
                    link_objects: list[str], driver: list[str], libs: list[str], out_path: str) -> str:
    """Schedule one kernel with `params`, compile it and link it as the artifact links its kernels
    (with the target's C driver, so cross targets work): a plain shared library that TVM's
    loader, an RPC server and qc_bench.c can all open. Returns the template's name; any failure
    raises (the pool reports it as the candidate's error)."""
    import subprocess
    func = tvm.ir.load_json(func_json)
    name = str(func.attrs["global_symbol"])
    kernel = Kernel(name, func, kind, scalars, panel)
    target = tvm.target.Target(target_spec)
    scheduled, template = schedule(kernel, target, params)
    obj = out_path + ".o"
    tvm.compile(tvm.IRModule({name: scheduled}), target=target).mod.write_to_file(obj)
    cmd = [*driver, "-shared", "-fPIC", obj, *link_objects, "-o", out_path, *libs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    Path(obj).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(f"linking the candidate failed: {proc.stderr.strip()[-600:]}")
    return template


def measure_candidate(session, lib_path: str, name: str, arrays: list, outputs: list[int], repeat: int,
                      min_repeat_ms: int) -> dict:
    """Upload, load, run once (its outputs come back for checking; that run is the warm-up too),
    then time `repeat` rounds of at least min_repeat_ms each; returns per-call microseconds."""
    session.upload(lib_path)
    module = session.load_module(Path(lib_path).name)
    dev = session.cpu()
    args = [tvm.runtime.tensor(a, dev) if isinstance(a, np.ndarray) else a for a in arrays]
    module[name](*args)
    written = [args[i].numpy() for i in outputs]
    timer = module.time_evaluator(name, dev, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
    return {"times_us": [t * 1e6 for t in timer(*args).results], "outputs": written}


class _HostSession:
    """The three calls measure_candidate makes of an RPC session, on this machine."""

    def upload(self, path):
        self.path = path

    def load_module(self, name):
        return tvm.runtime.load_module(self.path)

    def cpu(self):
        return tvm.cpu()


def rpc_measure(tracker: str, key: str, session_timeout: int, lib_path: str, name: str, arrays: list,
                outputs: list[int], repeat: int, min_repeat_ms: int) -> dict:
    """measure_candidate on a device from a TVM RPC tracker: a fresh session each time, so a
    candidate that crashes its server process costs only itself; session_timeout bounds a hang."""
    from tvm import rpc
    host, _, port = tracker.rpartition(":")
    session = rpc.connect_tracker(host or "127.0.0.1", int(port)).request(key, priority=1,
                                                                          session_timeout=session_timeout)
    return measure_candidate(session, lib_path, name, arrays, outputs, repeat, min_repeat_ms)


def local_measure(lib_path: str, name: str, arrays: list, outputs: list[int], repeat: int, min_repeat_ms: int):
    """measure_candidate on this machine, with the same calls as on a remote device (run in a
    worker process, so a crash or hang costs only that worker)."""
    return measure_candidate(_HostSession(), lib_path, name, arrays, outputs, repeat, min_repeat_ms)
