"""Load a built artifact from Python with ctypes: `qcompile.load("out/model.so")(x=...)`.

Needs neither TVM nor the compiler at run time: only the .so (and its manifest, to learn the
symbol prefix; without one, the file name stem is used).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from ..errors import QCompileError

MAX_DIMS = 8
_NP_OF_ONNX = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_,
               10: np.float16, 16: ml_dtypes.bfloat16}
BUSY = 8
_STATUS = {1: "invalid argument", 2: "dtype", 3: "shape", 4: "bounds", 5: "kernel", 6: "load", 7: "cpu", 8: "busy"}


class ArtifactError(QCompileError):
    phase = "run"

    def __init__(self, message: str, status: int, **kw):
        super().__init__(message, **kw)
        self.status = status


class _Info(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("dtype", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("dims", ctypes.c_int64 * MAX_DIMS), ("dim_names", ctypes.c_char_p * MAX_DIMS),
                ("max_dims", ctypes.c_int64 * MAX_DIMS)]


class _Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("dtype", ctypes.c_int32), ("ndim", ctypes.c_int32),
                ("dims", ctypes.c_int64 * MAX_DIMS), ("capacity", ctypes.c_size_t)]


class _Options(ctypes.Structure):
    _fields_ = [("num_threads", ctypes.c_int32)]


class TensorSpec:
    def __init__(self, info: _Info):
        self.name = info.name.decode()
        self.dtype = np.dtype(_NP_OF_ONNX[info.dtype])
        self.onnx_dtype = info.dtype
        self.shape = tuple(int(info.dims[i]) if info.dims[i] >= 0 else info.dim_names[i].decode()
                           for i in range(info.ndim))
        self.max_shape = tuple(int(info.max_dims[i]) for i in range(info.ndim))

    def __repr__(self) -> str:
        return f"{self.name}: {self.dtype}{list(self.shape)} (max {list(self.max_shape)})"


class Model:
    """One instance of a compiled model; call it with numpy arrays by input name or position."""

    def __init__(self, path: str | Path, num_threads: int = 0):
        path = Path(path)
        if not path.exists():
            raise ArtifactError(f"'{path}': no such file", 6, phase="load")
        self.path = path
        _check_loadable(path)
        self.prefix = _prefix_of(path)
        try:
            self._lib = _open(path)
        except OSError as exc:
            raise ArtifactError(f"'{path}' cannot be loaded: {exc}", 6, phase="load") from None
        lib, p = self._lib, self.prefix
        try:
            self._create = getattr(lib, f"{p}_create")
        except AttributeError:
            raise ArtifactError(f"'{path}' has no {p}_create: not a qcompile artifact, or renamed without its "
                                "manifest", 6, phase="load") from None
        self._create.argtypes = [ctypes.POINTER(_Options), ctypes.POINTER(ctypes.c_void_p)]
        self._run = getattr(lib, f"{p}_run")
        self._run.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Tensor), ctypes.c_int, ctypes.POINTER(_Tensor),
                              ctypes.c_int]
        self._destroy = getattr(lib, f"{p}_destroy")
        self._destroy.argtypes = [ctypes.c_void_p]
        self._error = getattr(lib, f"{p}_last_error")
        self._error.argtypes = [ctypes.c_void_p]
        self._error.restype = ctypes.c_char_p
        for fn in ("input_info", "output_info"):
            getattr(lib, f"{p}_{fn}").restype = ctypes.POINTER(_Info)
        self.version = _call_str(lib, f"{p}_version")
        in_info, out_info = getattr(lib, f"{p}_input_info"), getattr(lib, f"{p}_output_info")
        self.inputs = [TensorSpec(in_info(i).contents) for i in range(getattr(lib, f"{p}_num_inputs")())]
        self.outputs = [TensorSpec(out_info(i).contents) for i in range(getattr(lib, f"{p}_num_outputs")())]
        handle = ctypes.c_void_p()
        status = self._create(ctypes.byref(_Options(num_threads)), ctypes.byref(handle))
        if status:
            raise ArtifactError(self._error(None).decode(), status, phase="load")
        self._handle = handle
        self.vocab_size = self._session_symbols()

    def _session_symbols(self) -> int | None:
        """Bind the session functions when the library has them (decoders); the vocabulary size."""
        lib, p = self._lib, self.prefix
        if not hasattr(lib, f"{p}_session_create"):
            return None
        vp, i64 = ctypes.c_void_p, ctypes.c_int64
        floats = ctypes.POINTER(ctypes.c_float)
        for name, args, res in (("create", [vp, i64, ctypes.POINTER(vp)], ctypes.c_int),
                                ("prefill", [vp, ctypes.POINTER(i64), i64, floats], ctypes.c_int),
                                ("decode", [vp, i64, floats], ctypes.c_int), ("reset", [vp], ctypes.c_int),
                                ("position", [vp], i64), ("capacity", [vp], i64), ("destroy", [vp], None)):
            fn = getattr(lib, f"{p}_session_{name}")
            fn.argtypes, fn.restype = args, res
        return int(self.outputs[[o.name for o in self.outputs].index(self._logits_name())].shape[-1])

    def _logits_name(self) -> str:
        manifest = self.path.with_name(self.path.stem + ".manifest.json")
        try:
            return json.loads(manifest.read_text())["session"]["logits"]
        except (OSError, ValueError, KeyError):
            return next(o.name for o in self.outputs if len(o.shape) == 3)

    def session(self, max_context: int = 0) -> "Session":
        """A decoding session that keeps the KV cache inside the library (decoders only)."""
        if self.vocab_size is None:
            raise ArtifactError(f"'{self.path.name}' has no session API: the model is not a decoder with KV-cache "
                                "inputs and outputs ('session' in its manifest says why)", 1,
                                hint="export the model with past/present cache tensors (e.g. tools/export_model.py "
                                     "--kv-cache) and build that file")
        return Session(self, max_context)

    def message(self, status: int) -> str:
        """The C library's message for a call that returned `status` on this thread (a call refused
        as busy leaves the instance's own message alone: it belongs to the running call)."""
        return self._error(None if status == BUSY else self._handle).decode()

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._destroy(self._handle)
            self._handle = None

    def __del__(self):
        self.close()

    def __call__(self, *args, **kwargs) -> dict[str, np.ndarray]:
        return self._invoke(args, kwargs)

    def trace(self, *args, **kwargs) -> tuple[dict[str, np.ndarray], list["StepRecord"]]:
        """Run once with a step observer: the outputs, and for every kernel in order the graph values
        it read (before it ran) and wrote (copies; weights are not shown). What `qcompile verify`
        checks node by node against the reference interpreter."""
        set_observer = getattr(self._lib, f"{self.prefix}_set_step_observer", None)
        if set_observer is None:
            raise ArtifactError(f"'{self.path.name}' has no step observer: it was built by an older qcompile", 1,
                                hint="rebuild it")
        records: list[StepRecord] = []
        failures: list[BaseException] = []

        def seen(_user, step, after, node, count, names, values):
            try:
                if not after:
                    records.append(StepRecord(step, node.decode(), {}, {}))
                side = records[-1].writes if after else records[-1].reads
                for i in range(count):
                    t = values[i]
                    dtype = _NP_OF_ONNX.get(t.dtype)
                    if dtype is not None:
                        shape = tuple(t.dims[d] for d in range(t.ndim))
                        side[names[i].decode()] = _copy_out(t.data, dtype, shape)
            except BaseException as exc:     # ctypes would print and drop it
                failures.append(exc)

        callback = _OBSERVER(seen)
        set_observer.argtypes = [ctypes.c_void_p, _OBSERVER, ctypes.c_void_p]
        status = set_observer(self._handle, callback, None)
        if status:
            raise ArtifactError(self.message(status), status)
        try:
            outputs = self._invoke(args, kwargs)
        finally:
            set_observer(self._handle, _OBSERVER(), None)
        if failures:
            raise failures[0]
        return outputs, records

    def _invoke(self, args, kwargs) -> dict[str, np.ndarray]:
        if len(args) > len(self.inputs):
            raise ArtifactError(f"the model takes {len(self.inputs)} inputs, got {len(args)}", 1)
        feeds = {spec.name: a for spec, a in zip(self.inputs, args)}
        feeds.update(kwargs)
        missing = [s.name for s in self.inputs if s.name not in feeds]
        extra = sorted(set(feeds) - {s.name for s in self.inputs})
        if missing or extra:
            what = "; ".join(part for part in (f"missing inputs {missing}" if missing else "",
                                               f"unknown inputs {extra}" if extra else "") if part)
            raise ArtifactError(f"{what}; the model takes {[s.name for s in self.inputs]}", 1)
        arrays = [np.asarray(feeds[s.name], order="C") for s in self.inputs]    # (ascontiguousarray makes 0-d 1-d)
        for spec, arr in zip(self.inputs, arrays):
            if arr.dtype != spec.dtype:
                raise ArtifactError(f"input '{spec.name}' is {arr.dtype}; the model takes {spec.dtype}", 2)
        ins = (_Tensor * max(len(arrays), 1))()
        for t, arr in zip(ins, arrays):
            _fill(t, arr)
        outs = (_Tensor * max(len(self.outputs), 1))()
        buffers = []
        for t, spec in zip(outs, self.outputs):
            buf = np.empty(int(np.prod(spec.max_shape, dtype=np.int64)), spec.dtype)
            buffers.append(buf)
            t.data, t.dtype, t.capacity = buf.ctypes.data, spec.onnx_dtype, buf.nbytes
        status = self._run(self._handle, ins, len(arrays), outs, len(self.outputs))
        if status:
            raise ArtifactError(self.message(status), status)
        result = {}
        for t, spec, buf in zip(outs, self.outputs, buffers):
            shape = tuple(t.dims[i] for i in range(t.ndim))
            result[spec.name] = buf[:int(np.prod(shape, dtype=np.int64))].reshape(shape).copy()
        return result


@dataclass
class StepRecord:
    """One kernel of a traced run: its index, graph node, and the values it read and wrote."""
    step: int
    node: str
    reads: dict[str, np.ndarray]
    writes: dict[str, np.ndarray]


_OBSERVER = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int32,
                             ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(_Tensor))


def _copy_out(address: int | None, dtype, shape: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    if not count:
        return np.zeros(shape, dtype)
    raw = (ctypes.c_char * (count * np.dtype(dtype).itemsize)).from_address(address)
    return np.frombuffer(raw, dtype).reshape(shape).copy()


class Session:
    """prefill(tokens) and decode(token) return the last token's logits; the cache stays inside."""

    def __init__(self, model: Model, max_context: int = 0):
        self.model = model
        self._fn = {name: getattr(model._lib, f"{model.prefix}_session_{name}")
                    for name in ("create", "prefill", "decode", "reset", "position", "capacity", "destroy")}
        handle = ctypes.c_void_p()
        status = self._fn["create"](model._handle, max_context, ctypes.byref(handle))
        if status:
            raise ArtifactError(model.message(status), status)
        self._handle = handle

    def _check(self, status: int) -> None:
        if status:
            raise ArtifactError(self.model.message(status), status)

    def prefill(self, tokens) -> np.ndarray:
        ids = np.ascontiguousarray(np.asarray(tokens, dtype=np.int64).reshape(-1))
        logits = np.empty(self.model.vocab_size, np.float32)
        self._check(self._fn["prefill"](self._handle, ids.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)), ids.size,
                                        logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
        return logits

    def decode(self, token: int) -> np.ndarray:
        logits = np.empty(self.model.vocab_size, np.float32)
        self._check(self._fn["decode"](self._handle, int(token), logits.ctypes.data_as(ctypes.POINTER(ctypes.c_float))))
        return logits

    def reset(self) -> None:
        self._check(self._fn["reset"](self._handle))

    @property
    def position(self) -> int:
        return int(self._fn["position"](self._handle))

    @property
    def capacity(self) -> int:
        return int(self._fn["capacity"](self._handle))

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._fn["destroy"](self._handle)
            self._handle = None

    def __del__(self):
        self.close()


def _fill(t: _Tensor, arr: np.ndarray) -> None:
    codes = {np.dtype(v): k for k, v in _NP_OF_ONNX.items()}
    if arr.ndim > MAX_DIMS:
        raise ArtifactError(f"an input has {arr.ndim} dims; at most {MAX_DIMS}", 3)
    t.data = arr.ctypes.data if arr.size else None
    t.dtype = codes.get(arr.dtype, -1)
    t.ndim = arr.ndim
    for i, d in enumerate(arr.shape):
        t.dims[i] = d


def _call_str(lib, name: str) -> str:
    fn = getattr(lib, name)
    fn.restype = ctypes.c_char_p
    return fn().decode()


_OPENED: dict[str, tuple[int, ...]] = {}    # resolved path -> the file's identity when first opened


def _open(path: Path) -> ctypes.CDLL:
    """dlopen, but a library rebuilt at a path this process already opened is opened from a fresh
    copy: dlopen matches by path and would return the old code (a rebuild in a notebook, or a
    build's self-test after an earlier build to the same folder)."""
    real = str(path.resolve())
    st = os.stat(real)
    identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if _OPENED.setdefault(real, identity) == identity:
        return ctypes.CDLL(real)
    with tempfile.TemporaryDirectory(prefix="qcompile_reload_") as tmp:
        copy = Path(tmp) / path.name
        shutil.copyfile(real, copy)
        return ctypes.CDLL(str(copy))     # the mapping outlives the file


ELF_MACHINES = {3: "x86", 62: "x86_64", 40: "arm", 183: "aarch64", 243: "riscv64"}


def elf_machine(path: Path) -> str | None:
    """The architecture an ELF file is built for (e.g. "aarch64"); None for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if head[:4] != b"\x7fELF" or len(head) < 20:
        return None
    code = int.from_bytes(head[18:20], "little")
    return ELF_MACHINES.get(code, f"ELF machine {code}")


def _check_loadable(path: Path) -> None:
    """What a file is, when it is not a library this machine loads: an ONNX model, or a library
    for another architecture (instead of dlopen's 'invalid ELF header' or 'No such file')."""
    import platform
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"\x7fELF":
        arch, here = elf_machine(path), platform.machine()
        if arch != here and not (arch == "aarch64" and here == "arm64"):
            raise ArtifactError(f"'{path}' is a library for {arch}; this machine is {here}", 6, phase="load",
                                hint="run it on the device it was built for (`qcompile verify` runs its test "
                                     "vectors here, under qemu-aarch64 for an aarch64 library)")
        return
    if head[:4] in (b"\xcf\xfa\xed\xfe", b"\xca\xfe\xba\xbe"):      # Mach-O (a Mac's dylib)
        return
    if path.suffix == ".onnx" or _is_onnx(path):
        raise ArtifactError(f"'{path}' is an ONNX model, not a library built by qcompile", 6, phase="load",
                            hint=f"build it first: qcompile build {path} -o out/  (then run out/{path.stem}.so)")
    raise ArtifactError(f"'{path}' is not a shared library (no ELF or Mach-O header)", 6, phase="load",
                        hint="pass the NAME.so that `qcompile build` wrote")


def _is_onnx(path: Path) -> bool:
    try:
        import onnx
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return bool(model.graph.node or model.graph.input)


def _prefix_of(path: Path) -> str:
    manifest = path.with_name(path.stem + ".manifest.json")
    if manifest.exists():
        try:
            return json.loads(manifest.read_text())["symbol_prefix"]
        except (ValueError, KeyError):
            pass
    return path.stem


def load(path: str | Path, num_threads: int = 0) -> Model:
    return Model(path, num_threads)
