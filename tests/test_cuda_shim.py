"""CUDA artifacts checked numerically without a GPU: the kept build folder of a real CUDA build
(TVM's kernels and qcompile's launchers, unchanged) is linked with the CPU shim
(qcompile.testing.cuda_cpu) and run through the loader, and the decoder's session API, against
onnxruntime; the shim itself reports barriers and shuffles not every thread reaches, fails
launches a GPU refuses, and implements shuffles, votes and dynamic shared memory as CUDA defines
them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcompile.artifact.loader import load
from qcompile.build import BuildOptions, build
from qcompile.testing.cuda_cpu import SHIM_DIR, CudaShimError, compile_cxx, link_on_cpu
from qcompile.zoo import LlamaConfig, make_bert, make_llama, make_mlp

from .helpers import gpu_check_feeds, quantized_graph

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None or shutil.which("g++") is None,
                                reason="the CUDA build needs nvcc; the shim needs g++")

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
    for feed in gpu_check_feeds(name, model, np.random.default_rng(0)):
        got = artifact(**feed)
        for out, want in zip(sess.get_outputs(), sess.run(None, feed)):
            assert got[out.name].shape == want.shape, out.name
            np.testing.assert_allclose(got[out.name], want, rtol=1e-4, atol=1e-4, err_msg=f"{name}: {out.name}")


def test_a_cuda_decoder_session_matches_onnxruntime_on_the_cpu(on_cpu):
    """The session API keeps the KV cache on the device: prefill 7 tokens, decode 2, against the
    whole sequence in onnxruntime (the decoder; the others have no session API)."""
    name, model, path, library = on_cpu
    artifact = load(library)
    if name != "llama":
        assert artifact.vocab_size is None
        return
    ids = np.random.default_rng(1).integers(0, artifact.vocab_size, 9)
    session = artifact.session()
    got = np.stack([session.prefill(ids[:7]), session.decode(ids[7]), session.decode(ids[8])])
    kv = [i for i in model.graph.input if i.name.startswith("past_")]        # (batch, heads, past, head_dim)
    heads, head_dim = (kv[0].type.tensor_type.shape.dim[d].dim_value for d in (1, 3))
    feed = {i.name: np.zeros((1, heads, 0, head_dim), np.float32) for i in kv}
    want = ort.InferenceSession(str(path)).run(["logits"], {"input_ids": ids[None], **feed})[0][0, 6:]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_what_the_shim_cannot_build_is_named(tmp_path):
    with pytest.raises(CudaShimError, match=r"(?s)lacks kernels\.cu, m_exec\.c.*--keep-temps"):
        link_on_cpu(tmp_path, "m", tmp_path / "m.so")
    (tmp_path / "ptx.cu").write_text('extern "C" __global__ void k(int* x) { asm("mov.u32 %0, %%laneid;" : "=r"(*x)); }')
    # inline PTX cannot run on the CPU: g++'s assembler names it
    with pytest.raises(CudaShimError, match=r"(?s)compiling .*ptx\.cu for the CPU shim failed \(g\+\+ exited 1\)"
                                            r":\n.*laneid"):
        compile_cxx(tmp_path / "ptx.cu", tmp_path / "ptx.o")


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
    "warp": ("if (threadIdx.x < 16) x[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 1);\n"
             "  __syncthreads();",
             r"thread \(0,0,0\) waits at a warp operation \(.*t\.cu:3, mask 0xffffffff\) that thread \(16,0,0\) of "
             r"its warp does not reach: it waits at __syncthreads\(\) \(.*t\.cu:4\)"),
}


@pytest.mark.parametrize("case", sorted(BARRIERS))
def test_the_shim_reports_a_barrier_or_shuffle_not_all_threads_reach(case, tmp_path, shim_object):
    body, message = BARRIERS[case]
    proc = _run_cuda(f'extern "C" __global__ void __launch_bounds__(32) broken(float* x) {{\n'
                     f"  x[threadIdx.x] = 0;\n  {body}\n}}\n"
                     "int main() {\n  float* x;\n  cudaMalloc((void**)&x, 32 * sizeof(float));\n"
                     "  QC_LAUNCH(broken, dim3(2), dim3(32), 0, x);\n  return 0;\n}\n", tmp_path, shim_object)
    assert proc.returncode != 0
    assert "cuda shim: kernel broken, block (0,0,0): " in proc.stderr
    assert re.search(message, proc.stderr), proc.stderr


def test_launch_limits_warp_operations_and_dynamic_shared_memory(tmp_path, shim_object):
    """The GPU's launch checks (the error comes from the next cudaGetLastError, which clears it),
    each warp shuffle and vote against its definition on a 48-thread block (a partial second warp),
    and `extern __shared__` memory shared by a block."""
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
extern "C" __global__ void reverse(int* out) {
  extern __shared__ __align__(16) int buf[];
  buf[threadIdx.x] = blockIdx.x * 1000 + threadIdx.x;
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = buf[blockDim.x - 1 - threadIdx.x];
}
int main() {
  int *out, *rev;
  cudaMalloc((void**)&out, 48 * 6 * sizeof(int));
  cudaMalloc((void**)&rev, 2 * 100 * sizeof(int));
  QC_LAUNCH(lanes, dim3(1), dim3(2048), 0, out);
  printf("%s|", cudaGetErrorString(cudaGetLastError()));
  printf("%s|", cudaGetErrorString(cudaGetLastError()));
  QC_LAUNCH(lanes, dim3(1), dim3(32, 0), 0, out);
  printf("%s|", cudaGetErrorString(cudaGetLastError()));
  QC_LAUNCH(reverse, dim3(2), dim3(100), 64 << 10, rev);   /* over the default 48 KiB */
  printf("%s|", cudaGetErrorString(cudaGetLastError()));
  QC_LAUNCH(lanes, dim3(1), dim3(48), 0, out);
  QC_LAUNCH(reverse, dim3(2), dim3(100), 100 * sizeof(int), rev);
  printf("%s\n", cudaGetErrorString(cudaGetLastError()));
  for (int i = 0; i < 48 * 6; ++i) printf("%d ", out[i]);
  printf("\n");
  for (int i = 0; i < 200; ++i) printf("%d ", rev[i]);
  return 0;
}
''', tmp_path, shim_object)
    assert proc.returncode == 0, proc.stderr
    errors, lanes, rev = proc.stdout.splitlines()
    assert errors.split("|") == ["invalid configuration argument", "no error", "invalid configuration argument",
                                 "invalid argument", "no error"]
    t = np.arange(48)
    base, lane = t // 32 * 32, t % 32
    count = np.where(t < 32, 32, 16)                        # lanes in this thread's warp
    ballot = np.bitwise_or.reduce([1 << k for k in range(0, 32, 3)])
    want = np.stack([(base + 3) * 10,
                     np.where(lane % 8 + 4 < 8, t + 4, t),
                     np.where(lane >= 1, t - 1, t),
                     np.where((lane ^ 16) < count, base + (lane ^ 16), t),    # an absent lane: its own value
                     np.where(t < 32, ballot, ballot & 0xFFFF),
                     np.where(t < 32, 0xFFFFFFFF, 0xFFFF)], axis=1).astype(np.uint32).astype(np.int32)
    np.testing.assert_array_equal(np.array(lanes.split(), dtype=np.int32).reshape(48, 6), want)
    i = np.arange(100)
    np.testing.assert_array_equal(np.array(rev.split(), dtype=np.int64), np.concatenate([99 - i, 1099 - i]))


QCFG = LlamaConfig(hidden_size=128, intermediate_size=256, vocab_size=512, num_layers=2)
QCASES = {
    "int8": dict(precision="int8"),
    "int4-g32": dict(precision="int4", group_size=32),
    "mixed-ternary": dict(precision="mixed", middle="ternary"),
    "int4-g64-asym": dict(precision="int4", group_size=64, plan_text='"*/MatMul*" = "int4-g64-asym"\n'),
}


@pytest.mark.parametrize("case", list(QCASES))
def test_quantized_cuda_kernels_match_the_interpreter_on_the_cpu(case, tmp_path):
    """int8, int4 (symmetric and with zero points) and ternary layers lower to TIR kernels for the
    GPU (int8 rows per token, W[N, K] packed to 8, 4 or 2 bits and dequantized in registers); on the CPU shim the decoder
    matches the reference interpreter running the same quantized graph."""
    from qcompile.ir.interpret import run
    kw = dict(QCASES[case])
    plan = None
    if "plan_text" in kw:
        plan = tmp_path / "plan.toml"
        plan.write_text(kw.pop("plan_text"))
    path = tmp_path / "llama.onnx"
    onnx.save(make_llama(QCFG), str(path))
    out = tmp_path / "out"
    result = build(path, BuildOptions(target="cuda", out_dir=out, max_seq_len=16, plan=plan, keep_temps=True, **kw))
    manifest = json.loads(result.manifest.read_text())
    ops = {k["op"]: k["schedule"] for k in manifest["kernels"]}
    assert {"qcompile.QuantizeRowsTIR", "qcompile.QLinearTIR"} <= set(ops)
    assert ops["qcompile.QLinearTIR"] == "qlinear-warp-per-column"
    assert all(layer["layout"].endswith("-bit (GPU)") for layer in manifest["quantized_layers"])
    model = load(link_on_cpu(out / "llama_build", "llama", tmp_path / "cpu" / "llama.so"))
    graph = quantized_graph(path, kw.pop("precision"), plan, **kw)
    rng = np.random.default_rng(3)
    for seq in (1, 7):
        ids = rng.integers(0, QCFG.vocab_size, (1, seq)).astype(np.int64)
        got = model(input_ids=ids)["logits"]
        expected = run(graph, {"input_ids": ids})["logits"]
        # float32 sums against the reference's float64 ones: a rare int8 rounding step downstream
        assert np.abs(got - expected).max() <= 1e-3 * np.abs(expected).max(), (case, seq)


@pytest.mark.parametrize("name,precision", [("mlp", "int8"), ("bert", "int4"), ("mlp", "ternary"),
                                            ("bert", "ternary"), ("llama", "bf16")])
def test_other_models_and_precisions_on_the_cpu(name, precision, tmp_path):
    """The MLP and BERT encoder quantized, and the decoder with bf16 weights (the shim's bf16
    type), against the reference interpreter running the same graph."""
    from qcompile.ir.interpret import run
    model = MODELS[name]()
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    build(path, BuildOptions(target="cuda", precision=precision, max_seq_len=16, keep_temps=True,
                             out_dir=tmp_path / "out"))
    artifact = load(link_on_cpu(tmp_path / "out" / f"{name}_build", name, tmp_path / "cpu" / f"{name}.so"))
    graph = quantized_graph(path, precision)
    for feed in gpu_check_feeds(name, model, np.random.default_rng(5)):
        got, expected = artifact(**feed), run(graph, feed)
        for out, want in expected.items():
            assert np.abs(got[out] - want).max() <= 1e-3 * max(np.abs(want).max(), 1.0), (name, precision, out)
