"""Metal without a Mac (qcompile.testing.metal_cpu): the type check rejects what MSL rejects;
hand-written kernels run through qc_metal_dispatch (fibers per thread, checked barriers,
SIMD-group functions) and match numpy; dispatches Metal refuses fail naming the kernel. (Whole
artifacts, every model at every precision: tests/test_metal_models.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qcompile.testing.metal_cpu import MetalShimError, compile_kernels, link_on_cpu, runtime_objects, typecheck

needs_clang = pytest.mark.skipif(shutil.which("clang++") is None, reason="the MSL type check needs clang++")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="running MSL on the CPU needs g++")

# ---- the type check rejects what MSL rejects --------------------------------------------------------

GOOD = """#include <metal_stdlib>
using namespace metal;
kernel void k(device const half* x [[ buffer(0) ]], device float4* y [[ buffer(1) ]],
              constant float& scale [[ buffer(2) ]], uint i [[ thread_position_in_grid ]]) {
  half4 h = *(device const half4*)(x + 4 * i);
  float4 f = float4(h);
  threadgroup_barrier(mem_flags::mem_threadgroup);
  y[i] = f * scale;
}
"""
PLANTED = {   # what is replaced, by what, and clang's complaint
    "implicit half4 to float4": ("float4 f = float4(h);", "float4 f = h;", "no viable conversion from"),
    "write to a constant buffer": ("y[i] = f * scale;", "scale = 2.0f; y[i] = f;",
                                   "cannot assign to variable 'scale' with const-qualified type"),
    "barrier without mem_flags": ("threadgroup_barrier(mem_flags::mem_threadgroup);", "threadgroup_barrier();",
                                  "no matching function for call to 'threadgroup_barrier'"),
    "misspelled attribute": ("[[ thread_position_in_grid ]]", "[[ thread_position_in_gird ]]",
                             "unknown attribute 'thread_position_in_gird' ignored"),
}


@needs_clang
def test_the_unbroken_kernel_type_checks(tmp_path):
    (tmp_path / "k.metal").write_text(GOOD)
    typecheck(tmp_path / "k.metal")


@needs_clang
@pytest.mark.parametrize("case", list(PLANTED))
def test_a_planted_error_is_rejected_at_its_line(case, tmp_path):
    old, new, complaint = PLANTED[case]
    assert old in GOOD
    source = GOOD.replace(old, new)
    line = source[:source.index(new)].count("\n") + 1
    (tmp_path / "k.metal").write_text(source)
    with pytest.raises(MetalShimError) as err:
        typecheck(tmp_path / "k.metal")
    assert re.search(rf"k\.metal:{line}:\d+: error: {re.escape(complaint)}", err.value.message), err.value.message


# ---- hand-written kernels on the CPU through qc_metal.h -------------------------------------------

KERNELS = """#include <metal_stdlib>
using namespace metal;

// one sum per threadgroup: a tree in threadgroup memory, a barrier per level
kernel void tg_sum(device const float* x [[ buffer(0) ]], device float* sums [[ buffer(1) ]],
                   uint tid [[ thread_index_in_threadgroup ]], uint group [[ threadgroup_position_in_grid ]],
                   uint n [[ threads_per_threadgroup ]]) {
  threadgroup float partial[256];
  partial[tid] = x[group * n + tid];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  for (uint s = n / 2; s > 0; s >>= 1) {
    if (tid < s) partial[tid] += partial[tid + s];
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  if (tid == 0) sums[group] = partial[0];
}

kernel void simd_ops(device const float* x [[ buffer(0) ]], device float* out [[ buffer(1) ]],
                     uint i [[ thread_position_in_grid ]], uint lane [[ thread_index_in_simdgroup ]],
                     uint sg [[ simdgroup_index_in_threadgroup ]]) {
  float v = x[i];
  out[7 * i + 0] = simd_shuffle_down(v, 3);
  out[7 * i + 1] = simd_shuffle_up(v, 2);
  out[7 * i + 2] = simd_shuffle_xor(v, 5);
  out[7 * i + 3] = simd_shuffle(v, 7);
  out[7 * i + 4] = simd_sum(v);
  out[7 * i + 5] = lane + 100 * sg;
  for (ushort d = 16; d > 0; d /= 2) v += simd_shuffle_down(v, d);   // TVM's reduction tree
  out[7 * i + 6] = simd_broadcast(v, 0);
}

kernel void half_ops(device const half* x [[ buffer(0) ]], device half* y [[ buffer(1) ]],
                     device const float* f [[ buffer(2) ]], device half* rounded [[ buffer(3) ]],
                     device float4* wide [[ buffer(4) ]], uint i [[ thread_position_in_grid ]]) {
  half h = x[i];
  y[i] = h * 2.0h + half(1) - exp(h) / 4;
  rounded[i] = half(f[i]);
  if (i < 4) wide[i] = float4(*(device const half4*)(x + 4 * i)) * 0.5f;
}

kernel void bfloat_ops(device const float* x [[ buffer(0) ]], device bfloat* y [[ buffer(1) ]],
                       device float* z [[ buffer(2) ]], uint i [[ thread_position_in_grid ]]) {
  bfloat b = bfloat(x[i]);
  y[i] = b;
  z[i] = b * 3.0f;
}

kernel void grid2d(device uint* out [[ buffer(0) ]], uint2 group [[ threadgroup_position_in_grid ]],
                   uint2 tid [[ thread_position_in_threadgroup ]], uint2 pos [[ thread_position_in_grid ]],
                   uint2 size [[ threads_per_grid ]], uint2 groups [[ threadgroups_per_grid ]]) {
  out[pos.y * size.x + pos.x] = (group.y * groups.x + group.x) * 100 + tid.y * 10 + tid.x;
}

struct axpy_args_t {
  long n;
  float alpha;
  int beta[2];
};

kernel void axpy(device const float* x [[ buffer(0) ]], device float* y [[ buffer(1) ]],
                 constant axpy_args_t& arg [[ buffer(2) ]], uint i [[ thread_position_in_grid ]]) {
  if ((long)i < arg.n) y[i] = arg.alpha * x[i] + (float)arg.beta[0];
}

kernel void divergent(device float* x [[ buffer(0) ]], uint i [[ thread_position_in_threadgroup ]]) {
  if (i < 16) {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  } else {
    threadgroup_barrier(mem_flags::mem_threadgroup);
  }
  x[i] = 1;
}

kernel void too_big(device float* x [[ buffer(0) ]], uint i [[ thread_position_in_threadgroup ]]) {
  threadgroup float scratch[8200];
  scratch[i] = x[i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  x[i] = scratch[i + 1];
}
"""
NAMES = re.findall(r"kernel void (\w+)", KERNELS)

HOST = r"""
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include "qc_metal.h"

static const char* const NAMES[] = {%s};
enum { TG_SUM, SIMD_OPS, HALF_OPS, BFLOAT_OPS, GRID2D, AXPY, DIVERGENT, TOO_BIG };

static void* load(const char* file, size_t bytes) {
  void* p = qc_metal_alloc(bytes);
  FILE* f = fopen(file, "rb");
  if (!p || !f || fread(p, 1, bytes, f) != bytes) { fprintf(stderr, "cannot read %%s\n", file); exit(2); }
  fclose(f);
  return p;
}
static void save(const char* file, const void* p, size_t bytes) {
  FILE* f = fopen(file, "wb");
  fwrite(p, 1, bytes, f);
  fclose(f);
}
static int dispatch(int k, int64_t gx, int64_t gy, int64_t bx, int64_t by, std::initializer_list<void*> buffers,
                    const void* args = nullptr, size_t bytes = 0) {
  const int64_t g[3] = {gx, gy, 1}, b[3] = {bx, by, 1};
  return qc_metal_dispatch(k, g, b, (int)buffers.size(), buffers.begin(), args, bytes);
}
static void report(int rc) { printf("%%d %%s\n", rc, qc_metal_error()); }
static void check(int rc) {
  if (rc) { fprintf(stderr, "unexpected error: %%s\n", qc_metal_error()); exit(3); }
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "run";
  if (!strcmp(mode, "refused")) {   /* each line: what qc_metal_* said */
    float* x = (float*)qc_metal_alloc(64 * sizeof(float));
    report(dispatch(TG_SUM, 1, 1, 64, 1, {x, x}));
    check(qc_metal_open(NAMES, 7, nullptr, 0));
    check(qc_metal_begin());
    report(dispatch(TG_SUM, 1, 1, 1025, 1, {x, x}));
    report(dispatch(GRID2D, 2, 0, 8, 4, {x}));
    report(dispatch(AXPY, 1, 1, 64, 1, {x, x}));
    float on_the_heap[4];
    report(dispatch(GRID2D, 1, 1, 1, 1, {on_the_heap}));
    report(dispatch(9, 1, 1, 1, 1, {x}));
    float* w = (float*)qc_metal_workspace(sizeof(float));
    printf("workspace %%s\n", std::isnan(*w) ? "NaN" : "set");
    check(qc_metal_end());
    const char* unknown[] = {"tg_sum", "no_such_kernel"};
    report(qc_metal_open(unknown, 2, nullptr, 0));
    report(qc_metal_open(NAMES, 8, nullptr, 0));
    return 0;
  }
  check(qc_metal_open(NAMES, 7, nullptr, 0));
  check(qc_metal_begin());
  if (!strcmp(mode, "divergent")) {
    float* x = (float*)qc_metal_alloc(32 * sizeof(float));
    check(dispatch(DIVERGENT, 1, 1, 32, 1, {x}));
    check(qc_metal_end());
    return 0;
  }
  float* x = (float*)load("x.bin", 512 * 4);
  float* sums = (float*)qc_metal_alloc(2 * 4);
  check(dispatch(TG_SUM, 2, 1, 256, 1, {x, sums}));
  float* lanes = (float*)qc_metal_alloc(128 * 7 * 4);
  check(dispatch(SIMD_OPS, 2, 1, 64, 1, {x, lanes}));
  void* h = load("h.bin", 64 * 2);
  void* f = load("f.bin", 64 * 4);
  void *hy = qc_metal_alloc(64 * 2), *rounded = qc_metal_alloc(64 * 2), *wide = qc_metal_alloc(16 * 4);
  check(dispatch(HALF_OPS, 1, 1, 64, 1, {h, hy, f, rounded, wide}));
  void *by = qc_metal_alloc(64 * 2), *bz = qc_metal_alloc(64 * 4);
  check(dispatch(BFLOAT_OPS, 2, 1, 32, 1, {f, by, bz}));
  uint32_t* grid = (uint32_t*)qc_metal_alloc(24 * 8 * 4);
  check(dispatch(GRID2D, 3, 2, 8, 4, {grid}));
  struct { int64_t n; float alpha; int32_t beta[2]; } args = {100, 2.5f, {3, 0}};
  float* y = (float*)qc_metal_alloc(128 * 4);
  check(dispatch(AXPY, 2, 1, 64, 1, {x, y}, &args, sizeof args));
  save("y_before_end.bin", y, 128 * 4);    /* encoded, not yet run */
  check(qc_metal_end());
  save("sums.bin", sums, 2 * 4);
  save("lanes.bin", lanes, 128 * 7 * 4);
  save("hy.bin", hy, 64 * 2);
  save("rounded.bin", rounded, 64 * 2);
  save("wide.bin", wide, 16 * 4);
  save("by.bin", by, 64 * 2);
  save("bz.bin", bz, 64 * 4);
  save("grid.bin", grid, 24 * 8 * 4);
  save("y.bin", y, 128 * 4);
  return 0;
}
""" % ", ".join(f'"{n}"' for n in NAMES)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """KERNELS compiled for the CPU, linked with qc_metal_cpu and a host calling qc_metal.h."""
    from qcompile.artifact.runtime import RUNTIME_DIR
    tmp = tmp_path_factory.mktemp("metal_host")
    (tmp / "kernels.metal").write_text(KERNELS)
    (tmp / "host.cpp").write_text(HOST)
    objects = [compile_kernels(tmp / "kernels.metal", tmp / "kernels.o"), *runtime_objects(tmp)]
    subprocess.run(["g++", "-std=c++17", f"-I{RUNTIME_DIR}", str(tmp / "host.cpp"), *map(str, objects), "-o",
                    str(tmp / "host")], check=True)
    return tmp / "host"


def _run(host: Path, tmp: Path, mode: str = "run") -> subprocess.CompletedProcess:
    return subprocess.run([str(host), mode], cwd=tmp, capture_output=True, text=True, timeout=60)


def _bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (x has no NaN)"""
    u = x.view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


@needs_clang
def test_the_hand_written_kernels_type_check(tmp_path):
    (tmp_path / "kernels.metal").write_text(KERNELS)
    typecheck(tmp_path / "kernels.metal")


@needs_gxx
def test_hand_written_kernels_match_numpy(host, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(512).astype(np.float32)
    h = (rng.standard_normal(64) * 2).astype(np.float16)
    # conversions to half: ties, subnormals, overflow to infinity, signed zero, NaN
    f = np.concatenate([rng.standard_normal(40) * 100, [1 + 2**-11, 1 + 3 * 2**-11, 2**-24, 3 * 2**-26, 2**-25,
                                                        65504, 65519.9, 65520, -70000, -0.0, 1e-30, np.inf,
                                                        -np.inf, np.nan, 2**-14 - 2**-25, 0.1],
                        rng.standard_normal(8) * 1e-5]).astype(np.float32)
    x.tofile(tmp_path / "x.bin")
    h.tofile(tmp_path / "h.bin")
    f.tofile(tmp_path / "f.bin")
    proc = _run(host, tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = {p.stem: p for p in tmp_path.glob("*.bin")}

    np.testing.assert_allclose(np.fromfile(out["sums"], np.float32), x.reshape(2, 256).sum(1), rtol=1e-5)

    got = np.fromfile(out["lanes"], np.float32).reshape(128, 7)
    i = np.arange(128)
    lane, base = i % 32, i - i % 32
    groups = x[:128].reshape(4, 32)
    np.testing.assert_array_equal(got[:, 0], np.where(lane + 3 < 32, x[(i + 3) % 128], x[:128]))  # upper 3: own
    np.testing.assert_array_equal(got[:, 1], np.where(lane >= 2, x[i - 2], x[:128]))
    np.testing.assert_array_equal(got[:, 2], x[base + (lane ^ 5)])
    np.testing.assert_array_equal(got[:, 3], x[base + 7])
    np.testing.assert_allclose(got[:, 4], np.repeat(groups.sum(1), 32), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[:, 5], lane + 100 * (i % 64 // 32))
    np.testing.assert_allclose(got[:, 6], np.repeat(groups.sum(1), 32), rtol=1e-5, atol=1e-6)

    # half: each operation rounds to half, exp in float
    h32 = h.astype(np.float32)
    want = (((h * np.float16(2)) + np.float16(1)) - (np.exp(h32).astype(np.float16) / np.float16(4))).astype(np.float16)
    np.testing.assert_allclose(np.fromfile(out["hy"], np.float16).astype(np.float32), want.astype(np.float32),
                               rtol=2e-3, atol=2e-3)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(np.fromfile(out["rounded"], np.uint16), f.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(np.fromfile(out["wide"], np.float32), h32[:16] * 0.5)

    finite = np.nan_to_num(f, nan=0.0, posinf=0.0, neginf=0.0)
    bits = _bf16(finite)
    got_bits = np.fromfile(out["by"], np.uint16)
    ok = np.isfinite(f)
    np.testing.assert_array_equal(got_bits[ok], bits[ok])
    assert np.isnan((got_bits[np.isnan(f)].astype(np.uint32) << 16).view(np.float32)).all()
    bf = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(np.fromfile(out["bz"], np.float32)[ok], (bf * np.float32(3))[ok])

    grid = np.fromfile(out["grid"], np.uint32).reshape(8, 24)          # [y, x] over 3x2 groups of 8x4
    py, px = np.mgrid[0:8, 0:24]
    np.testing.assert_array_equal(grid, ((py // 4) * 3 + px // 8) * 100 + (py % 4) * 10 + px % 8)

    y = np.fromfile(out["y"], np.float32)
    np.testing.assert_array_equal(y[:100], np.float32(2.5) * x[:100] + np.float32(3))
    np.testing.assert_array_equal(y[100:], 0)                           # past n: untouched (zero-filled)
    np.testing.assert_array_equal(np.fromfile(out["y_before_end"], np.float32), 0)   # runs at qc_metal_end


@needs_gxx
def test_dispatches_metal_refuses_fail_naming_the_kernel(host, tmp_path):
    proc = _run(host, tmp_path, "refused")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    expected = [
        r"-1 qc_metal_dispatch outside qc_metal_begin/qc_metal_end",
        r"-1 Metal validation: dispatch of kernel tg_sum: threadsPerThreadgroup \(1025, 1, 1\) = 1025 threads exceeds "
        r"maxTotalThreadsPerThreadgroup \(1024\)",
        r"-1 Metal validation: dispatch of kernel grid2d: threadgroupsPerGrid \(2, 0, 1\) and threadsPerThreadgroup "
        r"\(8, 4, 1\) must be at least 1 in every dimension",
        r"-1 Metal validation: kernel axpy takes 2 buffers and 24 bytes of arguments; the dispatch binds 2 and 0",
        r"-1 qc_metal_dispatch: kernel grid2d: buffer 0 \(0x[0-9a-f]+\) lies in no qc_metal_alloc allocation",
        r"-1 qc_metal_dispatch: no kernel 9 \(qc_metal_open loaded 7\)",
        r"workspace NaN",
        r"-1 the Metal library has no kernel named no_such_kernel",
        r"-1 creating the compute pipeline of kernel too_big failed: its threadgroup memory \(32800 bytes\) exceeds",
    ]
    assert len(lines) == len(expected), proc.stdout
    for line, pattern in zip(lines, expected):
        assert re.match(pattern, line), (line, pattern)


@needs_gxx
def test_a_divergent_threadgroup_barrier_is_reported(host, tmp_path):
    proc = _run(host, tmp_path, "divergent")
    assert proc.returncode != 0
    first = KERNELS.index("threadgroup_barrier", KERNELS.index("kernel void divergent"))
    second = KERNELS.index("threadgroup_barrier", first + 1)
    first, second = (KERNELS[:at].count("\n") + 1 for at in (first, second))    # their lines
    assert re.search(rf"metal shim: kernel divergent, block \(0,0,0\): threads wait at different "
                     rf"threadgroup_barrier\(\): thread \(0,0,0\) at .*kernels\.metal:{first}, thread \(16,0,0\) at "
                     rf".*kernels\.metal:{second}", proc.stderr), proc.stderr


@needs_gxx
def test_what_the_shim_cannot_run_is_named(tmp_path):
    with pytest.raises(MetalShimError, match=r"(?s)lacks kernels\.metal, kernels_host\.mm, m_exec\.c, "
                                             r"qc_runtime\.c, weights\.bin"
                                             r".*<out>/<prefix>_metal"):
        link_on_cpu(tmp_path, "m", tmp_path / "m.so")
    (tmp_path / "k.metal").write_text("#include <metal_stdlib>\nusing namespace metal;\n"
                                      "kernel void k(device float* x [[ buffer(0) ]],\n"
                                      "  threadgroup float* t [[ threadgroup(0) ]]) { x[0] = t[0]; }\n")
    with pytest.raises(MetalShimError, match=r"k\.metal:3: kernel k: parameter 'threadgroup float\* t .*': "
                                             r"qc_metal\.h binds device and constant buffers only"):
        compile_kernels(tmp_path / "k.metal", tmp_path / "k.o")


@needs_gxx
def test_a_launcher_packs_32_and_64_bit_scalars_as_tvm_lays_them_out(tmp_path):
    """TVM's Metal argument struct gives every scalar 8 bytes (a 32-bit one is `int n[2]`); the
    launcher's struct must match it (the CPU runtime refuses a dispatch whose argument bytes differ
    from the kernel's struct; TVM orders them by name): y[i] = x[i] * n + k + z, n and k int32
    scalars (side by side: with natural alignment a 4-byte field each would be 8 bytes short) and
    z an int64 one."""
    from tvm import te, tirx

    from qcompile.artifact.runtime import include_dirs
    from qcompile.targets.presets import get_preset
    from qcompile.targets.tvm import metal
    from qcompile.targets.tvm.kernels import Kernel
    n, k, z = tirx.Var("n", "int32"), tirx.Var("k", "int32"), tirx.Var("z", "int64")
    x = te.placeholder((64,), "float32", name="in0")
    y = te.compute((64,), lambda i: x[i] * n.astype("float32") + (k.astype("int64") + z).astype("float32"), name="y")
    func = te.create_prim_func([x, y, n, k, z]).with_attr("global_symbol", "scaled")
    module = metal.lower({"scaled": Kernel("scaled", func, "injective", [])}, get_preset("metal"))
    (tmp_path / "kernels.metal").write_text(module.source)
    (tmp_path / "kernels_host.mm").write_text(module.host_source())
    (tmp_path / "main.cpp").write_text(r'''
#include <stdio.h>
#include <string.h>
#include <tvm/ffi/c_api.h>
#include "qc_metal.h"
extern "C" int qc_metal_load_kernels(const void*, size_t);
extern "C" int __tvm_ffi_scaled(void*, const TVMFFIAny*, int32_t, TVMFFIAny*);
static const char* raised = "";
extern "C" void TVMFFIErrorSetRaisedFromCStrParts(const char*, const char** parts, int32_t) { raised = parts[0]; }
int main() {
  if (qc_metal_load_kernels(NULL, 0)) { printf("open: %s\n", qc_metal_error()); return 1; }
  float* x = (float*)qc_metal_alloc(64 * 4);
  float* y = (float*)qc_metal_alloc(64 * 4);
  for (int i = 0; i < 64; ++i) x[i] = (float)i;
  int64_t shape[1] = {64};
  DLTensor t[2];
  memset(t, 0, sizeof t);
  for (int k = 0; k < 2; ++k) { t[k].data = k ? (void*)y : (void*)x; t[k].ndim = 1; t[k].shape = shape;
                                t[k].dtype.code = kDLFloat; t[k].dtype.bits = 32; t[k].dtype.lanes = 1; }
  TVMFFIAny args[5], result;
  memset(args, 0, sizeof args);
  args[0].type_index = args[1].type_index = kTVMFFIDLTensorPtr;
  args[0].v_ptr = &t[0]; args[1].v_ptr = &t[1];
  args[2].type_index = args[3].type_index = args[4].type_index = kTVMFFIInt;
  args[2].v_int64 = 3; args[3].v_int64 = 20; args[4].v_int64 = 1000;
  if (qc_metal_begin() || __tvm_ffi_scaled(NULL, args, 5, &result) || qc_metal_end()) {
    printf("failed: %s %s\n", raised, qc_metal_error()); return 1;
  }
  for (int i = 0; i < 64; ++i) printf("%g ", y[i]);
  return 0;
}
''')
    from qcompile.testing.metal_cpu import _gxx
    includes = [f"-I{d}" for d in include_dirs()]
    objects = [compile_kernels(tmp_path / "kernels.metal", tmp_path / "kernels.o"),
               _gxx(tmp_path / "kernels_host.mm", tmp_path / "host.o", "-x", "c++", *includes),
               _gxx(tmp_path / "main.cpp", tmp_path / "main.o", *includes), *runtime_objects(tmp_path)]
    subprocess.run(["g++", *map(str, objects), "-o", str(tmp_path / "main")], check=True)
    proc = subprocess.run([str(tmp_path / "main")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    np.testing.assert_array_equal(np.array(proc.stdout.split(), np.float32), np.arange(64) * 3 + 1020)
