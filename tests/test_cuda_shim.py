"""CUDA artifacts checked numerically without a GPU: the kept build folder of a real CUDA build
(TVM's kernels and qcompile's launchers, unchanged) is linked with the CPU shim
(qcompile.testing.cuda_cpu) and run through the loader against onnxruntime; the shim itself
reports divergent barriers and refuses oversized blocks as a GPU launch does."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompile.artifact.loader import load
from qcompile.build import BuildOptions, build
from qcompile.testing.cuda_cpu import SHIM_DIR, compile_cxx, link_on_cpu
from qcompile.zoo import LlamaConfig, make_bert, make_llama, make_mlp

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("g++") is None,
                                reason="the CUDA build needs nvcc; the shim needs g++")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from gpu_check import _feeds  # noqa: E402  (the inputs the GPU check uses: batch 1, llama prompt + step)

MODELS = {"mlp": make_mlp, "llama": lambda: make_llama(LlamaConfig(), with_kv_cache=True), "bert": make_bert}


@pytest.fixture(scope="module", params=sorted(MODELS))
def on_cpu(request, tmp_path_factory):
    """One CUDA build per model, its kernels linked to run on the CPU."""
    name, tmp = request.param, tmp_path_factory.mktemp(f"cuda_shim_{request.param}")
    model = MODELS[name]()
    onnx.save(model, str(tmp / f"{name}.onnx"))
    out = tmp / "out"
    build(tmp / f"{name}.onnx", BuildOptions(target="cuda", precision="fp32", max_seq_len=64, keep_temps=True,
                                             out_dir=out))
    library = link_on_cpu(out / f"{name}_build", name, tmp / "cpu" / f"{name}.so")
    return name, model, tmp / f"{name}.onnx", library


def test_cuda_kernels_match_onnxruntime_on_the_cpu(on_cpu):
    name, model, path, library = on_cpu
    artifact = load(library)
    assert artifact.prefix == name                 # found through the copied manifest
    sess = ort.InferenceSession(str(path))
    for feed in _feeds(name, model, np.random.default_rng(0)):
        got = artifact(**feed)
        for out, want in zip(sess.get_outputs(), sess.run(None, feed)):
            assert got[out.name].shape == want.shape, out.name
            np.testing.assert_allclose(got[out.name], want, rtol=1e-4, atol=1e-4, err_msg=f"{name}: {out.name}")


@pytest.fixture(scope="module")
def shim_object(tmp_path_factory):
    return compile_cxx(SHIM_DIR / "cuda_shim.cpp", tmp_path_factory.mktemp("shim") / "cuda_shim.o", cuda=False)


def _run_cuda(source: str, tmp: Path, shim_object: Path) -> subprocess.CompletedProcess:
    """A hand-written .cu with a main(), compiled against the shim and run as its own process
    (the shim aborts on a broken barrier)."""
    (tmp / "t.cu").write_text(source)
    obj = compile_cxx(tmp / "t.cu", tmp / "t.o")
    subprocess.run(["g++", str(obj), str(shim_object), "-o", str(tmp / "t")], check=True)
    return subprocess.run([str(tmp / "t")], capture_output=True, text=True, timeout=30)


BARRIERS = {
    "different": ("if (threadIdx.x < 16) { x[threadIdx.x] = 1; __syncthreads(); }\n"
                  "  else { __syncthreads(); x[threadIdx.x] = 2; }",
                  r"threads wait at different __syncthreads\(\): thread \(0,0,0\) at .*t\.cu:3, "
                  r"thread \(16,0,0\) at .*t\.cu:4"),
    "returned": ("if (threadIdx.x == 5) return;\n  __syncthreads();",
                 r"thread \(0,0,0\) waits at __syncthreads\(\) \(.*t\.cu:4\) but thread \(5,0,0\) has returned"),
}


@pytest.mark.parametrize("case", sorted(BARRIERS))
def test_the_shim_reports_a_barrier_not_all_threads_reach(case, tmp_path, shim_object):
    body, message = BARRIERS[case]
    proc = _run_cuda(f'extern "C" __global__ void __launch_bounds__(32) broken(float* x) {{\n'
                     f"  x[threadIdx.x] = 0;\n  {body}\n}}\n"
                     "int main() {\n  float* x;\n  cudaMalloc((void**)&x, 32 * sizeof(float));\n"
                     "  QC_LAUNCH(broken, dim3(2), dim3(32), 0, x);\n  return 0;\n}\n", tmp_path, shim_object)
    assert proc.returncode != 0
    assert "cuda shim: kernel broken, block (0,0,0): " in proc.stderr
    assert re.search(message, proc.stderr), proc.stderr


def test_a_block_over_1024_threads_fails_its_launch_and_warp_operations_work(tmp_path, shim_object):
    """The GPU's launch checks (cudaGetLastError after the launch, then cleared), and each warp
    shuffle and vote against its definition, on a 48-thread block (a partial second warp)."""
    proc = _run_cuda(r'''
#include <stdio.h>
extern "C" __global__ void lanes(int* out) {
  int t = threadIdx.x, lane = t % 32;
  unsigned m = __activemask();
  out[t * 6 + 0] = __shfl_sync(m, t * 10, 3);
  out[t * 6 + 1] = __shfl_down_sync(m, t, 4, 8);
  out[t * 6 + 2] = __shfl_up_sync(m, t, 1);
  out[t * 6 + 3] = __shfl_xor_sync(m, t, 16);
  out[t * 6 + 4] = (int)__ballot_sync(m, lane % 3 == 0);
  out[t * 6 + 5] = (int)m;
}
extern "C" __global__ void noop(int* out) { out[0] = 1; }
int main() {
  int* out;
  cudaMalloc((void**)&out, 48 * 6 * sizeof(int));
  QC_LAUNCH(noop, dim3(1), dim3(2048), 0, out);
  printf("%s|", cudaGetErrorString(cudaGetLastError()));
  printf("%s|", cudaGetErrorString(cudaGetLastError()));
  QC_LAUNCH(noop, dim3(1), dim3(32, 0), 0, out);
  printf("%s|", cudaGetErrorString(cudaGetLastError()));
  QC_LAUNCH(lanes, dim3(1), dim3(48), 0, out);
  printf("%s|", cudaGetErrorString(cudaGetLastError()));
  for (int i = 0; i < 48 * 6; ++i) printf("%d ", out[i]);
  return 0;
}
''', tmp_path, shim_object)
    assert proc.returncode == 0, proc.stderr
    errors, values = proc.stdout.rsplit("|", 1)
    assert errors.split("|") == ["invalid configuration argument", "no error", "invalid configuration argument",
                                 "no error"]
    got = np.array(values.split(), dtype=np.int64).reshape(48, 6)
    t = np.arange(48)
    base, lane = t // 32 * 32, t % 32
    count = np.where(t < 32, 32, 16)                        # lanes in this thread's warp
    masks = np.where(t < 32, 0xFFFFFFFF, 0xFFFF).astype(np.uint32).astype(np.int32)
    ballot = np.bitwise_or.reduce([(1 << k) for k in range(0, 32, 3)])
    want = np.stack([(base + 3) * 10,
                     np.where(lane % 8 + 4 < 8, t + 4, t),
                     np.where(lane >= 1, t - 1, t),
                     np.where((lane ^ 16) < count, base + (lane ^ 16), t),    # an exited/absent lane: own value
                     np.where(t < 32, ballot, ballot & 0xFFFF).astype(np.uint32).astype(np.int32),
                     masks], axis=1)
    np.testing.assert_array_equal(got, want)
