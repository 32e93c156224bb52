/*
 * qc_runtime.h - the small C runtime compiled into every qcompile artifact.
 *
 * Internal header: it is compiled together with the generated executor and the
 * TVM kernel objects into one self-contained shared library that needs only
 * libc, libm and pthread.  Everything declared here except the TVM hook symbols
 * has hidden visibility (QC_INTERNAL).  The TVM hooks
 *   TVMFFIErrorSetRaisedFromCStrParts, __TVMBackendParallelLaunch,
 *   __TVMBackendAllocWorkspace, __TVMBackendFreeWorkspace
 * are ordinary default-visibility symbols at link time (the kernels reference
 * them); the artifact's linker version script hides them in the final .so.
 *
 * Threading model
 *   A qc_pool is a persistent thread pool owned by one model instance.  Before
 *   running kernels, the executor binds the instance's pool to the calling
 *   thread (qc_pool_bind); the TVM parallel-launch hook uses the pool bound to
 *   the current thread.  With no pool bound (NULL), from inside a parallel task
 *   (nested parallelism) or for a single task, tasks run serially on the
 *   calling thread.  Different threads may run different pools concurrently.
 *   If several threads bind the same pool, their launches are serialized by a
 *   per-pool mutex (correct, but they do not run in parallel with each other).
 *   Pools do not survive fork(): a child must create its own.
 *
 * Kernel errors
 *   TVMFFIErrorSetRaisedFromCStrParts stores "kind: part0part1..." in a
 *   thread-local buffer (truncated to QC_ERROR_LEN-1 bytes).  When a task that
 *   ran on a pool worker fails, its message is copied to the pool and, once the
 *   launch returns nonzero, into the launching thread's buffer, so
 *   qc_last_kernel_error() on the caller always describes the failure.
 */
#ifndef QC_RUNTIME_H_
#define QC_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifndef QC_INTERNAL
#define QC_INTERNAL __attribute__((visibility("hidden")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Size of the thread-local kernel error buffer (including the trailing NUL). */
#define QC_ERROR_LEN 1024

/* ------------------------------------------------------------------------ */
/* TVM ABI (identical to tvm/runtime/c_backend_api.h, tvm/ffi/c_api.h)       */
/* ------------------------------------------------------------------------ */

#ifndef TVM_RUNTIME_C_BACKEND_API_H_ /* same types if c_backend_api.h came first */
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;

typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);
#endif

/* Called by a kernel right before it returns -1. */
void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** message_parts,
                                       int32_t num_parts);

/* The kernels hold weak `void*` data symbols with these names; qc_runtime.c
 * defines them strongly, pointing at qc_parallel_launch / qc_workspace_alloc /
 * qc_workspace_free. */
extern void* __TVMBackendParallelLaunch;
extern void* __TVMBackendAllocWorkspace;
extern void* __TVMBackendFreeWorkspace;

/* ------------------------------------------------------------------------ */
/* Thread pool                                                               */
/* ------------------------------------------------------------------------ */

typedef struct qc_pool qc_pool;

/* Create a pool of `num_threads` threads in total: num_threads-1 persistent
 * workers plus the launching thread, which runs tasks too.  num_threads <= 0:
 * $QCOMPILE_NUM_THREADS if it is a positive integer, else the number of CPUs
 * this process may run on (sched_getaffinity; sysconf fallback).
 * $QCOMPILE_SPIN_US (default 50) sets how long idle threads spin before they
 * sleep.  Returns NULL when out of memory.  If fewer workers than asked could
 * be started, the pool is smaller (see qc_pool_size). */
QC_INTERNAL qc_pool* qc_pool_create(int num_threads);

/* Stop and join the workers and free the pool (NULL is ok).  The pool must not
 * be in use by a launch, and no thread should keep it bound afterwards. */
QC_INTERNAL void qc_pool_destroy(qc_pool* pool);

/* Total number of threads (workers + the launching thread); >= 1. */
QC_INTERNAL int qc_pool_size(const qc_pool* pool);

/* Set / get the pool used by parallel launches on the calling thread.
 * NULL (the default) runs every launch serially on the calling thread. */
QC_INTERNAL void qc_pool_bind(qc_pool* pool);
QC_INTERNAL qc_pool* qc_pool_current(void);

/* The TVMBackendParallelLaunch implementation.  num_task == 0: one task per
 * pool thread (1 when serial).  Calls f(i, env, cdata) once for each i in
 * [0, n) with env->num_task == n; a thread stops running its remaining tasks
 * after one of them fails.  Returns 0, or -1 if any task returned nonzero. */
QC_INTERNAL int qc_parallel_launch(FTVMParallelLambda f, void* cdata, int num_task);

/* ------------------------------------------------------------------------ */
/* Errors                                                                    */
/* ------------------------------------------------------------------------ */

/* The calling thread's last kernel error message; "" when none.  Valid until
 * the next kernel error or qc_clear_kernel_error on this thread. */
QC_INTERNAL const char* qc_last_kernel_error(void);
QC_INTERNAL void qc_clear_kernel_error(void);

/* ------------------------------------------------------------------------ */
/* Memory                                                                    */
/* ------------------------------------------------------------------------ */

/* 64-byte aligned allocation; bytes == 0 returns a valid unique pointer.
 * NULL on failure or overflow.  Free with qc_aligned_free (NULL is ok). */
QC_INTERNAL void* qc_aligned_alloc(size_t bytes);
QC_INTERNAL void qc_aligned_free(void* ptr);

/* TVMBackendAllocWorkspace / TVMBackendFreeWorkspace implementations
 * (the device and dtype hints are ignored; memory is 64-byte aligned). */
QC_INTERNAL void* qc_workspace_alloc(int device_type, int device_id, uint64_t nbytes,
                                     int dtype_code_hint, int dtype_bits_hint);
QC_INTERNAL int qc_workspace_free(int device_type, int device_id, void* ptr);

/* ------------------------------------------------------------------------ */
/* CPU features                                                              */
/* ------------------------------------------------------------------------ */

/* Count how many of the named features the running CPU (and OS) lacks, and
 * write their names comma-separated into `missing` (always NUL-terminated when
 * missing_len > 0; truncated if too small; may be NULL).  Names are Linux
 * /proc/cpuinfo flag names:
 *   x86_64:  sse, sse2, pni (alias sse3), ssse3, sse4_1, sse4_2, popcnt, aes,
 *            pclmulqdq, avx, f16c, fma, bmi1, bmi2, avx2, avx_vnni, avx512f,
 *            avx512dq, avx512cd, avx512bw, avx512vl, avx512ifma, avx512vbmi,
 *            avx512_vbmi2, avx512_vnni, avx512_bitalg, avx512_vpopcntdq,
 *            avx512_bf16, avx512_fp16, amx_tile, amx_int8, amx_bf16
 *            (cpuid, plus xgetbv: AVX / AVX-512 / AMX state must be enabled
 *            by the OS)
 *   aarch64: fp, asimd, aes, atomics, fphp, asimdhp, asimdrdm, asimddp,
 *            asimdfhm, sve, sve2, i8mm, bf16, svei8mm, svebf16 (getauxval)
 * An unknown name counts as missing.  Returns -1 if n < 0 or features == NULL
 * with n > 0. */
QC_INTERNAL int qc_cpu_missing_features(const char* const* features, int n, char* missing,
                                        size_t missing_len);

/* x86_64 Linux: ask the kernel for permission to use AMX tile data
 * (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)); required once per
 * process before any AMX instruction.  Returns 0 on success, -1 otherwise
 * (and always -1 on other architectures). */
QC_INTERNAL int qc_cpu_request_amx(void);

/* ------------------------------------------------------------------------ */
/* Checksum                                                                  */
/* ------------------------------------------------------------------------ */

/* qc_checksum64 ("qc64"): a 64-bit checksum of n bytes.  All arithmetic is
 * modulo 2^64; >> is a logical shift.
 *
 *   K  = 0x9E3779B97F4A7C15   P  = 0xBF58476D1CE4E5B9
 *   M1 = 0xFF51AFD7ED558CCD   M2 = 0xC4CEB9FE1A85EC53
 *   W  = ceil(n / 8) words; word j (0 <= j < W) is bytes [8j, 8j+8) read as a
 *        little-endian uint64, the last one zero-padded when n % 8 != 0.
 *   acc = sum over j of mix(w[j] + (j + 1) * K), where
 *        mix(x): x ^= x >> 31; x *= P; x ^= x >> 29; return x
 *   h = acc ^ n ^ K; h ^= h >> 33; h *= M1; h ^= h >> 33; h *= M2; h ^= h >> 33
 *   return h
 *
 * The per-word terms are independent, so the sum vectorizes (numpy twin:
 * qcompile.artifact.runtime.checksum64).  mix is a bijection, so changing any
 * single word always changes the result; the position key makes moved words
 * count.  Not a cryptographic hash. */
QC_INTERNAL uint64_t qc_checksum64(const void* data, size_t n);

#ifdef __cplusplus
}
#endif

#endif /* QC_RUNTIME_H_ */
