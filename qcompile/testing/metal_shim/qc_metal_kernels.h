/* The table of MSL kernels compiled for the CPU (qcompile.testing.metal_cpu generates it after the
 * kernels) that qc_metal_cpu.cpp dispatches by name. */
#ifndef QC_METAL_KERNELS_H
#define QC_METAL_KERNELS_H

#include <cstddef>

struct qc_metal_kernel {
  const char* name;
  /* calls the kernel for the current thread (the shim's threadIdx/blockIdx/...): buffers[i] for
   * [[buffer(i)]], *args for the `constant T&` parameter after them */
  void (*thunk)(void* const* buffers, const void* args);
  int num_buffers;
  size_t args_bytes;          /* sizeof T; 0: the kernel takes no `constant T&` */
  size_t threadgroup_bytes;   /* its threadgroup arrays */
};

extern "C" __attribute__((visibility("hidden"))) const qc_metal_kernel qc_metal_kernels[];
extern "C" __attribute__((visibility("hidden"))) const int qc_metal_num_kernels;

#endif
