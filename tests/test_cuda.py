"""The CUDA target, compile side: every kernel of the fp32 MLP, Llama-style decoder and BERT-style
encoder gets a GPU schedule and CUDA C from TVM, its host launcher is generated from the lowered
IR, nvcc compiles kernels and launchers for sm_80 and sm_90 with no spills, the artifact links
with the static CUDA runtime and, with no GPU, refuses to load with a clear message; an
oversized block is caught before it ships. (Running it: tests/test_cuda_shim.py on the CPU,
tools/gpu_check.sh on a GPU.)"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import onnx
import pytest
import tvm
from tvm import te

from qcompile.artifact import cuda as cuda_tools
from qcompile.artifact.runtime import include_dirs
from qcompile.build import BuildOptions, build, front
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
    return f.kernels, cuda.lower(f.kernels, get_preset("cuda"), f.plan.bounds), path.parent


def test_every_kernel_becomes_a_cuda_kernel_with_its_launch(lowered):
    kernels, module, _ = lowered
    hosts = {k.host for k in module.kernels}
    assert hosts == set(kernels), "each kernel launches at least one device kernel"
    for k in module.kernels:
        assert f"__global__ void __launch_bounds__({k.launch_bounds}) {k.name}(" in module.source
        assert k.launch and all(t.split(".")[0] in ("blockIdx", "threadIdx") or t == "tirx.use_dyn_shared_memory"
                                for t in k.launch)
        assert k.params and all(p.endswith("_ptr") or p.isidentifier() for p in k.params)
    cuda.check_launches(module.kernels)
    assert set(module.rules) == set(kernels)
    assert all(r.startswith("dlight.") or r in ("attention-rows", "qlinear-warp-per-column") for r in module.rules.values())
    attention = [k for k in kernels.values() if k.kind == "attention"]
    assert all(module.rules[k.name] == "attention-rows" for k in attention)
    # each kernel's launcher launches exactly the device kernels TVM split it into
    launched = {ln.name: ln.kernels for ln in module.launchers}
    assert set(launched) == set(kernels)
    for k in module.kernels:
        assert k.name in launched[k.host]


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_every_kernel_and_launcher_without_spills(lowered, arch):
    _, module, tmp = lowered
    src = tmp / f"kernels_{arch}.cu"
    src.write_text(module.artifact_source())
    reports = cuda_tools.compile_device(src, arch, tmp / f"kernels_{arch}.o", include_dirs())
    assert {r.kernel for r in reports} == {k.name for k in module.kernels}
    assert all(r.spill_bytes == 0 and 0 < r.registers <= 255 for r in reports)
    symbols = subprocess.run(["nm", str(tmp / f"kernels_{arch}.o")], capture_output=True, text=True).stdout
    for ln in module.launchers:      # the executor calls each launcher by the CPU kernels' symbol
        assert f" T __tvm_ffi_{ln.name}\n" in symbols


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
    devices = cuda.device_kernels(cuda.split_host_device(sch.mod, target)[1], cuda.launch_bounds(source))
    assert [(d.name, d.launch_bounds, d.launch) for d in devices] == [("wide_kernel", 4096, ["threadIdx.x"])]
    with pytest.raises(LoweringError, match="more than 1024 threads per block: wide_kernel"):
        cuda.check_launches(devices)
    cuda.check_launches([dataclasses.replace(devices[0], launch_bounds=1024)])


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_quantized_layers_get_their_gpu_schedules_and_compile(tmp_path, arch):
    """int4 layers: int8 rows by one block per row, then a warp per output column loading 16
    bytes of W per lane (K = 512); nvcc compiles them without spills. (Their numbers:
    tests/test_cuda_shim.py.)"""
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(in_features=512, hidden=(512,), out_features=16), str(path))
    f = front(path, BuildOptions(target="cuda", precision="int4", group_size=32), get_preset("cuda"), "q",
              lambda phase, detail: None)
    module = cuda.lower(f.kernels, get_preset("cuda"), f.plan.bounds)
    by_kind = {f.kernels[name].kind: rule for name, rule in module.rules.items()}
    assert by_kind["qgemm"] == "qlinear-warp-per-column" and by_kind["quantize_rows"] == "quantize-rows-block"
    assert "*(int4*)(" in module.source            # 16-byte loads of W and of the int8 row
    src = tmp_path / "q.cu"
    src.write_text(module.artifact_source())
    reports = cuda_tools.compile_device(src, arch, tmp_path / "q.o", include_dirs())
    assert reports and all(r.spill_bytes == 0 for r in reports)


def test_nvcc_errors_and_spills_are_reported(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k(float* x) { x[0] = undefined_name; }')
    with pytest.raises(cuda_tools.CudaToolchainError, match=r"nvcc \(sm_80\) failed on bad.cu"):
        cuda_tools.compile_device(bad, "sm_80", tmp_path / "bad.o", [])
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_80'\n"
           "ptxas info    : Function properties for k\n    8 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads\n"
           "ptxas info    : Used 255 registers\n")
    with pytest.raises(cuda_tools.CudaToolchainError, match=r"register spills for sm_80: k \(16 B\)"):
        cuda_tools.check_spills(log, "sm_80")


def test_cuda_artifact_builds_and_without_a_gpu_refuses_to_load(tmp_path):
    onnx.save(make_mlp(), str(tmp_path / "mlp.onnx"))
    res = build(tmp_path / "mlp.onnx", BuildOptions(target="cuda-sm90", out_dir=tmp_path / "out"))
    manifest = json.loads(res.manifest.read_text())
    assert manifest["target"]["preset"] == "cuda-sm90"
    assert all(k["schedule"].startswith("dlight.") for k in manifest["kernels"])  # the MLP: no attention
    device = manifest["cuda"]
    assert device["arch"] == "sm_90" and {d["kernel"] for d in device["device_kernels"]} == \
        {k["name"] for k in manifest["kernels"]}
    assert all(0 < d["threads"] <= 1024 and 0 < d["registers"] <= 255 for d in device["device_kernels"])
    deps = subprocess.run(["ldd", str(res.library)], capture_output=True, text=True).stdout
    assert "libcudart" not in deps, "the CUDA runtime is linked in statically"
    exported = subprocess.run(["nm", "-D", "--defined-only", str(res.library)], capture_output=True, text=True).stdout
    assert all(line.split()[-1].startswith("mlp_") for line in exported.splitlines() if line.strip())
    if Path("/dev/nvidia0").exists():
        pytest.skip("a GPU is present: tools/gpu_check.sh runs the artifact there")
    from qcompile.artifact.loader import ArtifactError, load
    with pytest.raises(ArtifactError, match="runs on an NVIDIA GPU and none is usable"):
        load(res.library)
