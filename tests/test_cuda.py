"""The CUDA target's first step: every kernel of the fp32 MLP, Llama-style decoder and BERT-style
encoder gets a GPU schedule and CUDA C from TVM, nvcc compiles it for sm_80 and sm_90 with no
spills, the launch metadata is read from the IR, and an oversized block is caught before it ships.
(No GPU here: compile only. Running the kernels on a CPU shim comes next.)"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import onnx
import pytest
import tvm
from tvm import te

from qcompile.build import BuildOptions, front
from qcompile.targets.plan import LoweringError
from qcompile.targets.presets import get_preset
from qcompile.targets.tvm import cuda
from qcompile.zoo import LlamaConfig, make_bert, make_llama, make_mlp

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")

MODELS = {"mlp": make_mlp, "llama": lambda: make_llama(LlamaConfig(), with_kv_cache=True), "bert": make_bert}


@pytest.fixture(scope="module", params=sorted(MODELS))
def lowered(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda") / f"{request.param}.onnx"
    onnx.save(MODELS[request.param](), str(path))
    f = front(path, BuildOptions(precision="fp32", max_seq_len=64), get_preset("cuda"), request.param,
              lambda phase, detail: None)
    return f.kernels, cuda.lower(f.kernels, get_preset("cuda")), path.parent


def test_every_kernel_becomes_a_cuda_kernel_with_its_launch(lowered):
    kernels, module, _ = lowered
    hosts = {k.host for k in module.kernels}
    assert hosts == set(kernels), "each kernel launches at least one device kernel"
    for k in module.kernels:
        assert f"__global__ void __launch_bounds__({k.launch_bounds}) {k.name}(" in module.source
        assert k.launch and all(t.split(".")[0] in ("blockIdx", "threadIdx") for t in k.launch)
        assert k.params and all(p.endswith("_ptr") or p.isidentifier() for p in k.params)
    cuda.check_launches(module.kernels)
    assert set(module.rules) == set(kernels) and all(r.startswith("dlight") for r in module.rules.values())


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_every_kernel_without_spills(lowered, arch):
    _, module, tmp = lowered
    reports = cuda.nvcc_compile(module.source, arch, tmp / f"kernels_{arch}.cubin")
    assert {r.kernel for r in reports} == {k.name for k in module.kernels}
    assert all(r.spill_bytes == 0 and 0 < r.registers <= 255 for r in reports)
    assert (tmp / f"kernels_{arch}.cubin").stat().st_size > 0


def test_a_block_larger_than_the_gpu_allows_is_caught():
    """A schedule that binds 4096 threads to one block: CUDA C and nvcc both accept it; the
    launch would fail on the device. qcompile refuses it."""
    x = te.placeholder((4096,), "float32", name="in0")
    y = te.compute((4096,), lambda i: x[i] * 2.0, name="y")
    func = te.create_prim_func([x, y]).with_attr("global_symbol", "wide")
    sch = tvm.s_tir.Schedule(tvm.IRModule({"wide": func}))
    sch.work_on("wide")
    sch.bind(sch.get_loops(sch.get_sblock("y"))[0], "threadIdx.x")
    target = cuda.target_for(get_preset("cuda"))
    source = tvm.compile(sch.mod, target=target).mod.imports[0].inspect_source()
    devices = cuda.device_kernels(sch.mod, target, cuda.launch_bounds(source))
    assert [(d.name, d.launch_bounds, d.launch) for d in devices] == [("wide_kernel", 4096, ["threadIdx.x"])]
    with pytest.raises(LoweringError, match="more than 1024 threads per block: wide_kernel"):
        cuda.check_launches(devices)
    cuda.check_launches([dataclasses.replace(devices[0], launch_bounds=1024)])


def test_quantized_kernels_are_refused_with_the_way_forward(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    f = front(path, BuildOptions(precision="int8"), get_preset("cuda"), "q", lambda phase, detail: None)
    with pytest.raises(LoweringError, match="CPU micro-kernels .* no CUDA version yet"):
        cuda.lower(f.kernels, get_preset("cuda"))


def test_nvcc_errors_are_reported(tmp_path):
    with pytest.raises(LoweringError, match="nvcc -arch=sm_80 failed"):
        cuda.nvcc_compile('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }', "sm_80",
                          tmp_path / "bad.cubin")
    assert Path(tmp_path / "bad.cu").exists()
