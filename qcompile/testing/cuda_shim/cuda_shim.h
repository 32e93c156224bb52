/* CUDA C on the CPU, for checking generated kernels numerically without a GPU.
 *
 * Force-included (g++ -std=c++17 -DQC_CUDA_SHIM -include cuda_shim.h) ahead of an unchanged .cu
 * file. Each launch runs every block in turn; the threads of a block are fibers on the calling OS
 * thread, switched only at __syncthreads() and warp operations, so a run is deterministic. That
 * is why shared memory can be static storage (one block is live at a time) and why atomics need
 * no atomic instructions. Barriers are checked: threads waiting at different __syncthreads()
 * calls, waiting while others of their block returned, or waiting at a shuffle for a lane that
 * waits elsewhere abort the process with the kernel, block, threads and source lines (on a GPU:
 * a hang or silent corruption). Launches a GPU refuses (block over 1024 threads, a zero dim, over
 * 48 KiB of dynamic shared memory) run nothing and set the error cudaGetLastError returns.
 *
 * What this cannot tell: nvcc's code generation (FMA contraction, fast math), the GPU memory
 * model, warp lockstep assumptions, cross-block communication, inline PTX, timing.
 */
#ifndef QC_SHIM_CUDA_SHIM_H
#define QC_SHIM_CUDA_SHIM_H

#ifndef __cplusplus
#error "cuda_shim.h is C++ (compile the .cu file with g++ -x c++)"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime_api.h"
#include "qc_shim.h"

/* ---- qualifiers ---------------------------------------------------------------------------- */
#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
/* Shared memory: the launching OS thread runs one block at a time, so a block's shared memory is
 * static storage of that thread (a block sees the previous block's values in it, as it may see
 * garbage on a GPU). thread_local rather than static because it also combines with `extern`:
 * `extern __shared__ T name[];` is dynamic shared memory, which the build points at one buffer
 * (qcompile.testing.cuda_cpu passes -D<name>=qc_shim_dyn_shared; see cuda_shim.cpp). */
#define __shared__ thread_local
/* __restrict__ stays: g++ knows it, with the same meaning. */

/* ---- built-in variables (dim3, threadIdx, ...: qc_shim.h) ------------------------------------- */
static constexpr int warpSize = 32;

/* ---- vector types (component-wise code only: CUDA defines no operators on them) ------------- */
#define QC_VEC(T, N, A2, A4)                                                                       \
  struct N##1 { T x; };                                                                            \
  struct __attribute__((aligned(A2))) N##2 { T x, y; };                                            \
  struct N##3 { T x, y, z; };                                                                      \
  struct __attribute__((aligned(A4))) N##4 { T x, y, z, w; };                                      \
  static inline N##1 make_##N##1(T x) { return {x}; }                                              \
  static inline N##2 make_##N##2(T x, T y) { return {x, y}; }                                      \
  static inline N##3 make_##N##3(T x, T y, T z) { return {x, y, z}; }                              \
  static inline N##4 make_##N##4(T x, T y, T z, T w) { return {x, y, z, w}; }
QC_VEC(signed char, char, 2, 4)
QC_VEC(unsigned char, uchar, 2, 4)
QC_VEC(short, short, 4, 8)
QC_VEC(unsigned short, ushort, 4, 8)
QC_VEC(int, int, 8, 16)
QC_VEC(unsigned int, uint, 8, 16)
QC_VEC(long, long, 16, 16)
QC_VEC(unsigned long, ulong, 16, 16)
QC_VEC(long long, longlong, 16, 16)
QC_VEC(unsigned long long, ulonglong, 16, 16)
QC_VEC(float, float, 8, 16)
QC_VEC(double, double, 16, 16)
#undef QC_VEC

/* ---- half and bfloat16 (what cuda_fp16.h / cuda_bf16.h give that TVM's code uses) ----------- */
typedef _Float16 half; /* IEEE binary16 with round-to-nearest-even conversions, like __half */
typedef _Float16 __half;
struct __align__(4) half2 {
  half x, y;
  half2() = default;
  half2(half a, half b) : x(a), y(b) {}
};
typedef half2 __half2;
static inline half __float2half(float f) { return (half)f; }
static inline half __float2half_rn(float f) { return (half)f; }
static inline float __half2float(half h) { return (float)h; }
static inline half2 make_half2(half a, half b) { return half2(a, b); }
static inline half2 __halves2half2(half a, half b) { return half2(a, b); }
static inline half2 __float2half2_rn(float f) { return half2((half)f, (half)f); }
static inline half hexp(half h) { return (half)expf((float)h); }
static inline half hlog(half h) { return (half)logf((float)h); }
static inline half hsqrt(half h) { return (half)sqrtf((float)h); }
static inline half hrsqrt(half h) { return (half)(1.0f / sqrtf((float)h)); }

/* bfloat16: float's top 16 bits; arithmetic in float, stores round to nearest even like the GPU. */
struct nv_bfloat16 {
  uint16_t bits;
  nv_bfloat16() = default;
  nv_bfloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    bits = (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((u >> 16) | 0x40)       /* NaN stays NaN */
                                           : (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  nv_bfloat16(double d) : nv_bfloat16((float)d) {}
  nv_bfloat16(int i) : nv_bfloat16((float)i) {}
  operator float() const {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
typedef nv_bfloat16 __nv_bfloat16;
struct __align__(4) nv_bfloat162 {   /* make_nv_bfloat162 and nv_bfloat164: TVM defines them itself */
  nv_bfloat16 x, y;
  nv_bfloat162() = default;
  nv_bfloat162(nv_bfloat16 a, nv_bfloat16 b) : x(a), y(b) {}
};
typedef nv_bfloat162 __nv_bfloat162;
static inline nv_bfloat16 __float2bfloat16(float f) { return nv_bfloat16(f); }
static inline nv_bfloat16 __float2bfloat16_rn(float f) { return nv_bfloat16(f); }
static inline float __bfloat162float(nv_bfloat16 b) { return (float)b; }
/* comparisons (TVM's bf16 max/min use __hgt/__hlt), for both 16-bit types */
#define QC_HCMP(NAME, OP)                                                                          \
  static inline bool NAME(half a, half b) { return a OP b; }                                       \
  static inline bool NAME(nv_bfloat16 a, nv_bfloat16 b) { return (float)a OP (float)b; }
QC_HCMP(__hgt, >)
QC_HCMP(__hge, >=)
QC_HCMP(__hlt, <)
QC_HCMP(__hle, <=)
QC_HCMP(__heq, ==)
QC_HCMP(__hne, !=)
#undef QC_HCMP
static inline half __hmax(half a, half b) { return a > b ? a : b; }
static inline half __hmin(half a, half b) { return a < b ? a : b; }

/* ---- math ------------------------------------------------------------------------------------- */
/* CUDA's max/min overloads: fmaxf/fminf for floating point (a NaN operand yields the other). */
static inline float max(float a, float b) { return fmaxf(a, b); }
static inline float min(float a, float b) { return fminf(a, b); }
static inline double max(double a, double b) { return fmax(a, b); }
static inline double min(double a, double b) { return fmin(a, b); }
template <class T, class = std::enable_if_t<std::is_integral_v<T>>>
static inline T max(T a, T b) { return a > b ? a : b; }
template <class T, class = std::enable_if_t<std::is_integral_v<T>>>
static inline T min(T a, T b) { return a < b ? a : b; }
/* (max/min of half and bfloat16: TVM's source defines them) */
static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
static inline double rsqrt(double x) { return 1.0 / sqrt(x); }
/* the fast intrinsics, exact (tolerances cover the GPU's approximations); macros because glibc
 * declares most of these names itself */
#define __expf(x) expf(x)
#define __exp10f(x) powf(10.0f, (x))
#define __logf(x) logf(x)
#define __log2f(x) log2f(x)
#define __powf(x, y) powf((x), (y))
#define __sinf(x) sinf(x)
#define __cosf(x) cosf(x)
#define __tanf(x) tanf(x)
static inline float __fdividef(float x, float y) { return x / y; }
static inline float __frcp_rn(float x) { return 1.0f / x; }
static inline float __fsqrt_rn(float x) { return sqrtf(x); }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, 4); return i; }
static inline unsigned __float_as_uint(float f) { unsigned i; std::memcpy(&i, &f, 4); return i; }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline float __uint_as_float(unsigned i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
static inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
static inline int __ffs(int x) { return __builtin_ffs(x); }
/* four 8-bit products summed into a 32-bit accumulator (sm_61+) */
static inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 32; i += 8) c += (int)(int8_t)(a >> i) * (int)(int8_t)(b >> i);
  return c;
}
static inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
  for (int i = 0; i < 32; i += 8) c += ((a >> i) & 0xffu) * ((b >> i) & 0xffu);
  return c;
}
template <class T> static inline T __ldg(const T* p) { return *p; }

/* ---- atomics: fibers switch only at barriers, so a plain read-modify-write is atomic ---------- */
#define QC_ATOMIC(NAME, EXPR) \
  template <class T> static inline T NAME(T* p, T v) { T old = *p; *p = (EXPR); return old; }
QC_ATOMIC(atomicAdd, old + v)
QC_ATOMIC(atomicSub, old - v)
QC_ATOMIC(atomicExch, v)
QC_ATOMIC(atomicMax, old > v ? old : v)
QC_ATOMIC(atomicMin, old < v ? old : v)
QC_ATOMIC(atomicAnd, old & v)
QC_ATOMIC(atomicOr, old | v)
QC_ATOMIC(atomicXor, old ^ v)
#undef QC_ATOMIC
template <class T> static inline T atomicCAS(T* p, T compare, T v) {
  T old = *p;
  if (old == compare) *p = v;
  return old;
}
static inline void __threadfence() {}
static inline void __threadfence_block() {}

/* ---- launches (the scheduler: qc_shim.h, cuda_shim.cpp) -------------------------------------- */
namespace qc_shim {
/* QC_LAUNCH's target: converts the launcher's arguments to the kernel's parameter types (device
 * pointers arrive as qc_any_ptr) and runs the grid. */
template <class... P, class... A>
static inline void launch(const char* name, void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
                          A... a) {
  static_assert(sizeof...(P) == sizeof...(A), "the launch passes another number of arguments than the kernel takes");
  struct Call {
    void (*kernel)(P...);
    std::tuple<P...> args;
  } call{kernel, std::tuple<P...>(static_cast<P>(a)...)};
  run(name, grid, block, shared_bytes, [](void* c) { std::apply(((Call*)c)->kernel, ((Call*)c)->args); }, &call);
}
}  // namespace qc_shim

#define QC_LAUNCH(kernel, grid, block, shared, ...) \
  qc_shim::launch(#kernel, kernel, grid, block, shared, ##__VA_ARGS__)

/* __builtin_FILE/LINE as default arguments name the caller's line: the barrier's identity. */
#define QC_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()
static inline void __syncthreads(QC_SITE) {
  qc_shim::syncthreads(file, line);
}
static inline void __syncwarp(unsigned mask = 0xffffffffu, QC_SITE) {
  qc_shim::warp_op(mask, qc_shim::kBallot, 0, 0, file, line);
}
static inline unsigned __activemask() { return qc_shim::active_mask(); }
static inline unsigned __ballot_sync(unsigned mask, int pred, QC_SITE) {
  return (unsigned)qc_shim::warp_op(mask, qc_shim::kBallot, pred != 0, 0, file, line);
}
static inline int __any_sync(unsigned mask, int pred, QC_SITE) {
  return __ballot_sync(mask, pred, file, line) != 0;
}
static inline int __all_sync(unsigned mask, int pred, QC_SITE) {
  return __ballot_sync(mask, !pred, file, line) == 0;
}
/* lanes are 32 consecutive linear thread ids; `width` splits a warp into independent groups */
template <class T>
static inline T __shfl_sync(unsigned mask, T v, int src, int width = 32, QC_SITE) {
  int l = qc_shim::lane();
  return qc_shim::shuffle(mask, v, (l & ~(width - 1)) + (src & (width - 1)), file, line);
}
template <class T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, QC_SITE) {
  int l = qc_shim::lane();
  return qc_shim::shuffle(mask, v, (l & (width - 1)) + (int)delta < width ? l + (int)delta : l, file, line);
}
template <class T>
static inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, QC_SITE) {
  int l = qc_shim::lane();
  return qc_shim::shuffle(mask, v, (l & (width - 1)) >= (int)delta ? l - (int)delta : l, file, line);
}
template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, QC_SITE) {
  int l = qc_shim::lane(), s = l ^ lane_mask;
  return qc_shim::shuffle(mask, v, (s & ~(width - 1)) > (l & ~(width - 1)) ? l : s, file, line);  /* later group: own */
}

#undef QC_SITE

/* Last: TVM writes `__shared__ alignas(64) float x[...]`, i.e. `thread_local alignas(64) ...`,
 * which g++ rejects (a standard attribute amid decl-specifiers); GNU's aligned attribute may go
 * there. A keyword as a macro is fine here: every standard header this file uses is already in. */
#define alignas(n) __attribute__((aligned(n)))

#endif
