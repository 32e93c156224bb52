/* The CPU shim's block scheduler (cuda_shim.cpp), shared by the CUDA shim (cuda_shim.h) and the
 * Metal one (../metal_shim): a launch runs every block in turn, the threads of a block as fibers on
 * the calling OS thread, switched only at barriers and warp (SIMD-group) operations, so a run is
 * deterministic and a block's shared memory can be static storage. Barriers and warp operations
 * not every thread reaches abort the process with the kernel, block, threads and source lines. */
#ifndef QC_SHIM_QC_SHIM_H
#define QC_SHIM_QC_SHIM_H

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#define QC_SHIM_HIDDEN __attribute__((visibility("hidden")))

/* QC_SHIM_DEVICE_ONLY: only what kernels call (the Metal type check, where CUDA's names must not
 * resolve) */
#ifndef QC_SHIM_DEVICE_ONLY
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
/* Globals, set by the scheduler at each switch into a fiber: the scheduler's state is process-wide
 * and launches are serialized, so per-OS-thread copies would buy nothing and cost a TLS lookup at
 * every use in the kernels. Hidden: each artifact has its own copy. */
extern QC_SHIM_HIDDEN dim3 threadIdx, blockIdx, blockDim, gridDim;
#endif

namespace qc_shim {
enum WarpOp { kShuffle, kBallot };
/* How messages name the shim and its barrier: {"cuda shim", "__syncthreads()"} unless the Metal
 * runtime says otherwise before a launch. */
struct Names {
  const char* shim;
  const char* barrier;
};
extern QC_SHIM_HIDDEN Names names;
QC_SHIM_HIDDEN void syncthreads(const char* file, int line);
/* one warp operation: waits for every lane named in `mask`; kShuffle returns lane `src`'s value
 * (the caller's own when `src` is not one of them), kBallot the lanes whose value is non-zero */
QC_SHIM_HIDDEN uint64_t warp_op(unsigned mask, WarpOp op, uint64_t value, int src, const char* file, int line);
QC_SHIM_HIDDEN unsigned active_mask();   /* the lanes of the caller's warp that have not returned */
QC_SHIM_HIDDEN int lane();               /* linear thread id (x fastest) % 32 */
#ifndef QC_SHIM_DEVICE_ONLY
/* Runs `body(ctx)` for every thread of the grid. A launch the GPU refuses (over 1024 threads, a
 * zero dim, too much dynamic shared memory) runs nothing and sets the CUDA error. */
QC_SHIM_HIDDEN void run(const char* kernel, dim3 grid, dim3 block, size_t shared_bytes, void (*body)(void*),
                        void* ctx);
#endif

template <class T> static inline T shuffle(unsigned mask, T v, int src, const char* file, int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp shuffles move up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_op(mask, kShuffle, bits, src, file, line);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}
}  // namespace qc_shim

#endif
