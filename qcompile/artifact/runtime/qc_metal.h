/* The Metal runtime of a qcompile artifact: what the executor and the generated launchers call.
 *
 * On a Mac this is qc_metal.mm (Objective-C++ over Metal.framework); in the tests it is
 * qcompile/testing/metal_shim/qc_metal_cpu.cpp, which runs the same MSL kernels on the CPU.
 *
 * Memory is unified (Apple silicon): every buffer the kernels touch is a shared-storage MTLBuffer
 * whose contents the CPU addresses directly. qc_metal_alloc returns that CPU pointer; a dispatch
 * names its buffers by such pointers (anywhere inside an allocation) and the runtime binds the
 * MTLBuffer and the offset. One run's dispatches are encoded, in order, into the calling thread's
 * command buffer between qc_metal_begin and qc_metal_end (which commits and waits). */
#ifndef QC_METAL_H
#define QC_METAL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QC_METAL_HIDDEN __attribute__((visibility("hidden")))

/* The device, the kernels' library and one compute pipeline per kernel name, once per process.
 * `metallib`: the compiled library's bytes (embedded in the artifact). Returns 0, or -1 with
 * qc_metal_error() saying why (no Metal device, a kernel missing from the library, ...). */
QC_METAL_HIDDEN int qc_metal_open(const char* const* kernels, int num_kernels, const void* metallib,
                                  size_t metallib_bytes);

/* Shared-storage memory: a CPU pointer the kernels can be given, or NULL. */
QC_METAL_HIDDEN void* qc_metal_alloc(size_t bytes);
QC_METAL_HIDDEN void qc_metal_free(void* p);
/* Whether `p .. p + bytes` lies inside one allocation (kernels can read it in place). */
QC_METAL_HIDDEN int qc_metal_owns(const void* p, size_t bytes);

/* This thread's command buffer for one run; qc_metal_end commits it, waits, and releases the
 * run's workspaces. Both return 0, or -1 with qc_metal_error(). */
QC_METAL_HIDDEN int qc_metal_begin(void);
QC_METAL_HIDDEN int qc_metal_end(void);

/* Encodes kernel `kernel` (an index into qc_metal_open's names) over grid[3] threadgroups of
 * block[3] threads: buffers[i] at [[buffer(i)]], then, when args_bytes > 0, the scalar
 * arguments' struct at [[buffer(num_buffers)]]. Returns 0, or -1 with qc_metal_error(). */
QC_METAL_HIDDEN int qc_metal_dispatch(int kernel, const int64_t grid[3], const int64_t block[3], int num_buffers,
                                      void* const* buffers, const void* args, size_t args_bytes);

/* Memory for an intermediate between one launcher's dispatches, released at qc_metal_end. */
QC_METAL_HIDDEN void* qc_metal_workspace(size_t bytes);

/* Why the last call on this thread failed. */
QC_METAL_HIDDEN const char* qc_metal_error(void);

#ifdef __cplusplus
}
#endif

#endif
