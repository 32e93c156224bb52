/*
 * qc_runtime.c - thread pool, TVM backend hooks, kernel errors, aligned memory,
 * CPU feature checks and the qc64 checksum.  See qc_runtime.h for the API.
 *
 * C11 + POSIX threads; depends only on libc (and pthread).
 *
 * Thread pool design
 *   A launch publishes a job (fn, cdata, num_task) and bumps a generation
 *   counter; task i runs on pool thread i % size, where thread 0 is the
 *   launching thread itself and threads 1..size-1 are persistent workers.
 *   Every worker takes part in every job (workers without a task just check
 *   in), so the job description is never rewritten while a worker may still
 *   read it, and a launch never has to track which workers are awake.
 *
 *   Waiting (idle workers for a new job, the launcher for the workers to
 *   finish) is "spin, then sleep": first poll the shared counter with a CPU
 *   pause/yield hint for up to spin_ns (QCOMPILE_SPIN_US, default 50 us), then
 *   sleep on a pthread condition variable.  A model issues hundreds of
 *   parallel kernels per token separated by short serial gaps, so the spin
 *   keeps the workers hot across those gaps and a launch costs a few cache-line
 *   transfers instead of a futex wake-up per worker (several microseconds
 *   each); the bound keeps idle pools from burning CPU, which matters when
 *   several model instances share the machine.  The hand-off between spinning
 *   and sleeping is a Dekker-style protocol on seq_cst atomics (the sleeper
 *   announces itself, then rechecks under the mutex; the waker publishes, then
 *   checks for sleepers and signals under the mutex), so no wake-up is lost.
 *
 * Errors across threads
 *   A failing task on a worker claims the pool's error slot (first failure
 *   wins, atomically) and copies its thread-local message there.  After all
 *   tasks are done the launcher copies the slot into its own thread-local
 *   buffer and returns -1.
 */
#define _GNU_SOURCE 1

#include "qc_runtime.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif
#if defined(__aarch64__) && defined(__APPLE__)
#include <sys/sysctl.h>
#endif

#define QC_MAX_THREADS 1024
#define QC_DEFAULT_SPIN_US 50
#define QC_ALIGN 64

/* ======================================================================== */
/* Thread-local state                                                        */
/* ======================================================================== */

static _Thread_local qc_pool* tls_pool;        /* pool used by launches */
static _Thread_local int tls_depth;            /* >0: inside a task -> serial */
static _Thread_local char tls_err[QC_ERROR_LEN];

/* ======================================================================== */
/* Errors                                                                    */
/* ======================================================================== */

static size_t err_append(char* buf, size_t pos, const char* s) {
  if (s == NULL) return pos;
  size_t len = strlen(s);
  size_t room = QC_ERROR_LEN - 1 - pos;
  if (len > room) len = room;
  memcpy(buf + pos, s, len);
  pos += len;
  buf[pos] = '\0';
  return pos;
}

void TVMFFIErrorSetRaisedFromCStrParts(const char* kind, const char** message_parts,
                                       int32_t num_parts) {
  char* buf = tls_err;
  size_t pos = 0;
  buf[0] = '\0';
  pos = err_append(buf, pos, (kind != NULL && kind[0] != '\0') ? kind : "Error");
  pos = err_append(buf, pos, ": ");
  if (message_parts != NULL) {
    for (int32_t i = 0; i < num_parts; ++i) pos = err_append(buf, pos, message_parts[i]);
  }
}

const char* qc_last_kernel_error(void) { return tls_err; }

void qc_clear_kernel_error(void) { tls_err[0] = '\0'; }

/* ======================================================================== */
/* Memory                                                                    */
/* ======================================================================== */

void* qc_aligned_alloc(size_t bytes) {
  if (bytes > SIZE_MAX - (QC_ALIGN - 1)) return NULL;
  size_t size = (bytes + (QC_ALIGN - 1)) & ~(size_t)(QC_ALIGN - 1);
  if (size == 0) size = QC_ALIGN;
  void* ptr = NULL;
  if (posix_memalign(&ptr, QC_ALIGN, size) != 0) return NULL;
  return ptr;
}

void qc_aligned_free(void* ptr) { free(ptr); }

void* qc_workspace_alloc(int device_type, int device_id, uint64_t nbytes, int dtype_code_hint,
                         int dtype_bits_hint) {
  (void)device_type;
  (void)device_id;
  (void)dtype_code_hint;
  (void)dtype_bits_hint;
#if SIZE_MAX < UINT64_MAX
  if (nbytes > (uint64_t)SIZE_MAX) return NULL;
#endif
  return qc_aligned_alloc((size_t)nbytes);
}

int qc_workspace_free(int device_type, int device_id, void* ptr) {
  (void)device_type;
  (void)device_id;
  qc_aligned_free(ptr);
  return 0;
}

/* ======================================================================== */
/* Thread pool                                                               */
/* ======================================================================== */

typedef struct {
  qc_pool* pool;
  int index; /* 1 .. size-1 */
  pthread_t thread;
} qc_worker;

struct qc_pool {
  /* Immutable after creation. */
  int size;
  int64_t spin_ns;
  qc_worker* workers;

  pthread_mutex_t launch_mu; /* serializes launches from different threads */
  pthread_mutex_t mu;        /* protects the condition variables */
  pthread_cond_t work_cv;    /* workers sleep here waiting for a new gen */
  pthread_cond_t done_cv;    /* the launcher sleeps here until every task of the job is done */

  /* Current job: written by the launcher before `job` is bumped, read by claimers after they
   * observe the bump (atomics, because a late claimer may read them while the next job is being
   * written; its claim then fails and the values are discarded). */
  _Atomic(FTVMParallelLambda) fn;
  _Atomic(void*) cdata;
  atomic_int num_task;

  /* (generation << 32) | next unclaimed task. Tasks are claimed one by one with a CAS, so a
   * worker that wakes late (descheduled, busy core) finds them done instead of being waited for. */
  _Alignas(QC_ALIGN) _Atomic(uint64_t) job;
  atomic_int sleepers;                /* workers blocked (or about to) on work_cv */
  atomic_int shutdown;

  _Alignas(QC_ALIGN) atomic_int done;   /* tasks of the current job finished (run or skipped) */
  atomic_int caller_waiting;             /* launcher blocked on done_cv */

  _Alignas(QC_ALIGN) atomic_int failed; /* some task returned nonzero */
  atomic_int err_claimed;               /* 1 once a worker copied its message into err */
  char err[QC_ERROR_LEN];
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ __volatile__("yield" ::: "memory");
#else
  atomic_signal_fence(memory_order_seq_cst);
#endif
}

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Parse a non-negative decimal environment variable into *out (must be > 0
 * unless allow_zero).  Returns 1 if set and valid, else 0 (*out untouched). */
static int env_positive_long(const char* name, int allow_zero, long* out) {
  const char* s = getenv(name);
  if (s == NULL || *s == '\0') return 0;
  char* end = NULL;
  errno = 0;
  long v = strtol(s, &end, 10);
  while (end != NULL && (*end == ' ' || *end == '\t' || *end == '\n')) ++end;
  if (errno != 0 || end == s || end == NULL || *end != '\0') return 0;
  if (v < 0 || (v == 0 && !allow_zero)) return 0;
  *out = v;
  return 1;
}

static int default_num_threads(void) {
  long v = 0;
  if (env_positive_long("QCOMPILE_NUM_THREADS", 0, &v)) {
    return v > QC_MAX_THREADS ? QC_MAX_THREADS : (int)v;
  }
#if defined(__linux__) && defined(CPU_COUNT)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int c = CPU_COUNT(&set);
    if (c > 0) return c > QC_MAX_THREADS ? QC_MAX_THREADS : c;
  }
#endif
  long c = sysconf(_SC_NPROCESSORS_ONLN);
  if (c < 1) return 1;
  return c > QC_MAX_THREADS ? QC_MAX_THREADS : (int)c;
}

static inline uint32_t job_gen(uint64_t word) { return (uint32_t)(word >> 32); }
#define JOB_CLOSED 0x7FFFFFFFu /* a task index no job reaches */

/* Claim and run tasks of job `gen` until none is left. After a task fails, the claimed rest are
 * counted done without running. Returns -1 if a task run by this thread failed. */
static int run_claimed(qc_pool* p, uint32_t gen) {
  int rc = 0;
  for (;;) {
    uint64_t word = atomic_load_explicit(&p->job, memory_order_acquire);
    if (job_gen(word) != gen) return rc;                /* over, or a newer job started */
    FTVMParallelLambda fn = atomic_load_explicit(&p->fn, memory_order_relaxed);
    void* cdata = atomic_load_explicit(&p->cdata, memory_order_relaxed);
    int n = atomic_load_explicit(&p->num_task, memory_order_relaxed);
    int i = (int)(uint32_t)word;
    if (i >= n) return rc;
    if (!atomic_compare_exchange_weak_explicit(&p->job, &word, word + 1, memory_order_acquire,
                                               memory_order_relaxed))
      continue;                                         /* someone else took it: look again */
    if (!atomic_load_explicit(&p->failed, memory_order_relaxed)) {
      TVMParallelGroupEnv env;
      env.sync_handle = NULL;
      env.num_task = n;
      if (fn(i, &env, cdata) != 0) {
        if (tls_err[0] == '\0') snprintf(tls_err, QC_ERROR_LEN, "RuntimeError: parallel task %d failed", i);
        atomic_store_explicit(&p->failed, 1, memory_order_relaxed);
        if (tls_pool != p) {                            /* a worker: hand its message to the launcher */
          int expected = 0;
          if (atomic_compare_exchange_strong(&p->err_claimed, &expected, 1)) memcpy(p->err, tls_err, QC_ERROR_LEN);
          tls_err[0] = '\0';
        }
        rc = -1;
      }
    }
    if (atomic_fetch_add(&p->done, 1) + 1 == n && atomic_load(&p->caller_waiting)) {   /* seq_cst */
      pthread_mutex_lock(&p->mu);
      pthread_cond_signal(&p->done_cv);
      pthread_mutex_unlock(&p->mu);
    }
  }
}

/* Wait until the job generation differs from `seen`; returns the new one. */
static uint32_t wait_for_job(qc_pool* p, uint32_t seen) {
  uint32_t g;
  if (p->spin_ns > 0) {
    int64_t deadline = now_ns() + p->spin_ns;
    for (unsigned i = 1;; ++i) {
      g = job_gen(atomic_load_explicit(&p->job, memory_order_acquire));
      if (g != seen) return g;
      cpu_relax();
      if ((i & 31) == 0 && now_ns() >= deadline) break;
    }
  }
  pthread_mutex_lock(&p->mu);
  atomic_fetch_add(&p->sleepers, 1); /* seq_cst: pairs with the job bump */
  while ((g = job_gen(atomic_load(&p->job))) == seen) pthread_cond_wait(&p->work_cv, &p->mu);
  atomic_fetch_sub(&p->sleepers, 1);
  pthread_mutex_unlock(&p->mu);
  return g;
}

/* Launcher: wait until all n tasks of the current job are done (not for idle workers). */
static void wait_for_tasks(qc_pool* p, int n) {
  if (atomic_load_explicit(&p->done, memory_order_acquire) == n) return;
  if (p->spin_ns > 0) {
    int64_t deadline = now_ns() + p->spin_ns;
    for (unsigned i = 1;; ++i) {
      if (atomic_load_explicit(&p->done, memory_order_acquire) == n) return;
      cpu_relax();
      if ((i & 31) == 0 && now_ns() >= deadline) break;
    }
  }
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->caller_waiting, 1); /* seq_cst: pairs with the last increment */
  while (atomic_load(&p->done) != n) pthread_cond_wait(&p->done_cv, &p->mu);
  atomic_store(&p->caller_waiting, 0);
  pthread_mutex_unlock(&p->mu);
}

static void* worker_main(void* arg) {
  qc_worker* w = (qc_worker*)arg;
  qc_pool* p = w->pool;
  uint32_t seen = 0; /* the generation is 0 when the pool is created */
  tls_depth = 1;     /* launches from inside a task run serially */
  tls_pool = NULL;
  for (;;) {
    seen = wait_for_job(p, seen);
    if (atomic_load_explicit(&p->shutdown, memory_order_acquire)) break;
    (void)run_claimed(p, seen);
  }
  return NULL;
}

qc_pool* qc_pool_create(int num_threads) {
  int n = num_threads > 0 ? num_threads : default_num_threads();
  if (n > QC_MAX_THREADS) n = QC_MAX_THREADS;

  qc_pool* p = (qc_pool*)qc_aligned_alloc(sizeof(qc_pool));
  if (p == NULL) return NULL;
  memset(p, 0, sizeof(*p));
  p->size = 1;
  long spin_us = QC_DEFAULT_SPIN_US;
  (void)env_positive_long("QCOMPILE_SPIN_US", 1, &spin_us);
  if (spin_us > 1000000) spin_us = 1000000;
  p->spin_ns = (int64_t)spin_us * 1000;
  atomic_init(&p->job, 0u);
  atomic_init(&p->sleepers, 0);
  atomic_init(&p->shutdown, 0);
  atomic_init(&p->done, 0);
  atomic_init(&p->caller_waiting, 0);
  atomic_init(&p->failed, 0);
  atomic_init(&p->err_claimed, 0);
  pthread_mutex_init(&p->launch_mu, NULL);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->work_cv, NULL);
  pthread_cond_init(&p->done_cv, NULL);

  if (n > 1) {
    p->workers = (qc_worker*)calloc((size_t)(n - 1), sizeof(qc_worker));
    if (p->workers != NULL) {
      /* Workers inherit the signal mask: block everything so that signals are
       * delivered to the application's own threads. */
      sigset_t all, old;
      sigfillset(&all);
      pthread_sigmask(SIG_SETMASK, &all, &old);
      for (int i = 1; i < n; ++i) {
        qc_worker* w = &p->workers[i - 1];
        w->pool = p;
        w->index = i;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) break;
        p->size = i + 1;
      }
      pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
  }
  return p;
}

void qc_pool_destroy(qc_pool* p) {
  if (p == NULL) return;
  atomic_store(&p->shutdown, 1);
  pthread_mutex_lock(&p->mu);
  atomic_fetch_add(&p->job, (uint64_t)1 << 32);
  pthread_cond_broadcast(&p->work_cv);
  pthread_mutex_unlock(&p->mu);
  for (int i = 1; i < p->size; ++i) pthread_join(p->workers[i - 1].thread, NULL);
  free(p->workers);
  pthread_cond_destroy(&p->done_cv);
  pthread_cond_destroy(&p->work_cv);
  pthread_mutex_destroy(&p->mu);
  pthread_mutex_destroy(&p->launch_mu);
  if (tls_pool == p) tls_pool = NULL;
  qc_aligned_free(p);
}

int qc_pool_size(const qc_pool* p) { return p != NULL ? p->size : 1; }

void qc_pool_bind(qc_pool* p) { tls_pool = p; }

qc_pool* qc_pool_current(void) { return tls_pool; }

static int launch_serial(FTVMParallelLambda f, void* cdata, int n) {
  TVMParallelGroupEnv env;
  env.sync_handle = NULL;
  env.num_task = n;
  int rc = 0;
  ++tls_depth;
  for (int i = 0; i < n; ++i) {
    if (f(i, &env, cdata) != 0) {
      if (tls_err[0] == '\0') {
        snprintf(tls_err, QC_ERROR_LEN, "RuntimeError: parallel task %d failed", i);
      }
      rc = -1;
      break;
    }
  }
  --tls_depth;
  return rc;
}

int qc_parallel_launch(FTVMParallelLambda f, void* cdata, int num_task) {
  qc_pool* p = tls_pool;
  if (p == NULL || p->size <= 1 || tls_depth > 0) {
    return launch_serial(f, cdata, num_task > 0 ? num_task : 1);
  }
  int n = num_task > 0 ? num_task : p->size;
  if (n == 1) return launch_serial(f, cdata, 1);

  pthread_mutex_lock(&p->launch_mu);
  atomic_store_explicit(&p->fn, f, memory_order_relaxed);
  atomic_store_explicit(&p->cdata, cdata, memory_order_relaxed);
  atomic_store_explicit(&p->num_task, n, memory_order_relaxed);
  atomic_store_explicit(&p->failed, 0, memory_order_relaxed);
  atomic_store_explicit(&p->err_claimed, 0, memory_order_relaxed);
  atomic_store_explicit(&p->done, 0, memory_order_relaxed);
  uint32_t gen = job_gen(atomic_load_explicit(&p->job, memory_order_relaxed)) + 1;
  atomic_store(&p->job, (uint64_t)gen << 32); /* seq_cst: publishes the job */
  if (atomic_load(&p->sleepers) > 0) {
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
  }

  ++tls_depth;
  int own_rc = run_claimed(p, gen);
  --tls_depth;
  wait_for_tasks(p, n);
  /* Close the job before the next one's fields are written: a claimer that read this job's word
   * earlier must not see the next job's num_task and claim with this generation. */
  atomic_store(&p->job, ((uint64_t)gen << 32) | JOB_CLOSED);

  int rc = 0;
  if (atomic_load_explicit(&p->failed, memory_order_relaxed)) {
    rc = -1;
    /* Keep the launcher's own message if its task failed; otherwise report
     * the first worker failure. */
    if (own_rc == 0 && atomic_load_explicit(&p->err_claimed, memory_order_relaxed)) {
      memcpy(tls_err, p->err, QC_ERROR_LEN);
    }
  }
  pthread_mutex_unlock(&p->launch_mu);
  return rc;
}

/* ======================================================================== */
/* CPU features                                                              */
/* ======================================================================== */

static size_t list_append(char* buf, size_t len, size_t pos, const char* name) {
  if (buf == NULL || len == 0) return pos;
  const char* parts[2] = {pos > 0 ? "," : "", name != NULL ? name : "(null)"};
  for (int k = 0; k < 2; ++k) {
    for (const char* s = parts[k]; *s != '\0' && pos + 1 < len; ++s) buf[pos++] = *s;
  }
  buf[pos < len ? pos : len - 1] = '\0';
  return pos;
}

#if defined(__x86_64__)

enum { R_EAX = 0, R_EBX = 1, R_ECX = 2, R_EDX = 3 };
enum { OS_NONE = 0, OS_AVX = 1, OS_AVX512 = 2, OS_AMX = 3 };

typedef struct {
  const char* name;
  unsigned char leaf;   /* 1 or 7 */
  unsigned char subleaf;
  unsigned char reg;
  unsigned char bit;
  unsigned char os;     /* XCR0 state the OS must have enabled */
} x86_feature;

static const x86_feature kX86Features[] = {
    {"sse", 1, 0, R_EDX, 25, OS_NONE},
    {"sse2", 1, 0, R_EDX, 26, OS_NONE},
    {"pni", 1, 0, R_ECX, 0, OS_NONE},
    {"sse3", 1, 0, R_ECX, 0, OS_NONE},
    {"pclmulqdq", 1, 0, R_ECX, 1, OS_NONE},
    {"ssse3", 1, 0, R_ECX, 9, OS_NONE},
    {"fma", 1, 0, R_ECX, 12, OS_AVX},
    {"sse4_1", 1, 0, R_ECX, 19, OS_NONE},
    {"sse4_2", 1, 0, R_ECX, 20, OS_NONE},
    {"popcnt", 1, 0, R_ECX, 23, OS_NONE},
    {"aes", 1, 0, R_ECX, 25, OS_NONE},
    {"avx", 1, 0, R_ECX, 28, OS_AVX},
    {"f16c", 1, 0, R_ECX, 29, OS_AVX},
    {"bmi1", 7, 0, R_EBX, 3, OS_NONE},
    {"avx2", 7, 0, R_EBX, 5, OS_AVX},
    {"bmi2", 7, 0, R_EBX, 8, OS_NONE},
    {"avx512f", 7, 0, R_EBX, 16, OS_AVX512},
    {"avx512dq", 7, 0, R_EBX, 17, OS_AVX512},
    {"avx512ifma", 7, 0, R_EBX, 21, OS_AVX512},
    {"avx512cd", 7, 0, R_EBX, 28, OS_AVX512},
    {"avx512bw", 7, 0, R_EBX, 30, OS_AVX512},
    {"avx512vl", 7, 0, R_EBX, 31, OS_AVX512},
    {"avx512vbmi", 7, 0, R_ECX, 1, OS_AVX512},
    {"avx512_vbmi2", 7, 0, R_ECX, 6, OS_AVX512},
    {"gfni", 7, 0, R_ECX, 8, OS_NONE},
    {"vaes", 7, 0, R_ECX, 9, OS_AVX},
    {"vpclmulqdq", 7, 0, R_ECX, 10, OS_AVX},
    {"avx512_vnni", 7, 0, R_ECX, 11, OS_AVX512},
    {"avx512_bitalg", 7, 0, R_ECX, 12, OS_AVX512},
    {"avx512_vpopcntdq", 7, 0, R_ECX, 14, OS_AVX512},
    {"amx_bf16", 7, 0, R_EDX, 22, OS_AMX},
    {"avx512_fp16", 7, 0, R_EDX, 23, OS_AVX512},
    {"amx_tile", 7, 0, R_EDX, 24, OS_AMX},
    {"amx_int8", 7, 0, R_EDX, 25, OS_AMX},
    {"avx_vnni", 7, 1, R_EAX, 4, OS_AVX},
    {"avx512_bf16", 7, 1, R_EAX, 5, OS_AVX512},
};

typedef struct {
  unsigned regs[3][4]; /* [0]: leaf 1, [1]: leaf 7.0, [2]: leaf 7.1 */
  uint64_t xcr0;
} x86_cpu;

static void x86_probe(x86_cpu* c) {
  memset(c, 0, sizeof(*c));
  unsigned* r = c->regs[0];
  if (!__get_cpuid_count(1, 0, &r[0], &r[1], &r[2], &r[3])) return;
  if ((c->regs[0][R_ECX] >> 27) & 1u) { /* OSXSAVE: xgetbv is available */
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    c->xcr0 = ((uint64_t)hi << 32) | lo;
  }
  r = c->regs[1];
  if (__get_cpuid_count(7, 0, &r[0], &r[1], &r[2], &r[3])) {
    unsigned max_sub = r[0];
    r = c->regs[2];
    if (max_sub >= 1) __get_cpuid_count(7, 1, &r[0], &r[1], &r[2], &r[3]);
  }
}

static int x86_has(const x86_cpu* c, const char* name) {
  for (size_t i = 0; i < sizeof(kX86Features) / sizeof(kX86Features[0]); ++i) {
    const x86_feature* f = &kX86Features[i];
    if (strcmp(f->name, name) != 0) continue;
    int idx = f->leaf == 1 ? 0 : (f->subleaf == 0 ? 1 : 2);
    if (!((c->regs[idx][f->reg] >> f->bit) & 1u)) return 0;
    uint64_t need = 0;
    switch (f->os) {
      case OS_AVX: need = 0x6; break;                   /* SSE, AVX */
      case OS_AVX512: need = 0xE6; break;               /* + opmask, ZMM_Hi256, Hi16_ZMM */
      case OS_AMX: need = 0x6 | (3ull << 17); break;    /* XTILECFG, XTILEDATA */
      default: break;
    }
    return (c->xcr0 & need) == need;
  }
  return 0; /* unknown */
}

#elif defined(__aarch64__) && defined(__linux__)

#ifndef AT_HWCAP2
#define AT_HWCAP2 26
#endif

typedef struct {
  const char* name;
  int word; /* 0: AT_HWCAP, 1: AT_HWCAP2 */
  unsigned bit;
} arm_feature;

static const arm_feature kArmFeatures[] = {
    {"fp", 0, 0},        {"asimd", 0, 1},      {"aes", 0, 3},      {"pmull", 0, 4},
    {"sha1", 0, 5},      {"sha2", 0, 6},       {"crc32", 0, 7},    {"atomics", 0, 8},
    {"fphp", 0, 9},      {"asimdhp", 0, 10},   {"asimdrdm", 0, 12}, {"sha3", 0, 17},
    {"asimddp", 0, 20},  {"sve", 0, 22},       {"asimdfhm", 0, 23}, {"sve2", 1, 1},
    {"svei8mm", 1, 9},   {"svebf16", 1, 12},   {"i8mm", 1, 13},    {"bf16", 1, 14},
};

static int arm_has(const unsigned long hw[2], const char* name) {
  for (size_t i = 0; i < sizeof(kArmFeatures) / sizeof(kArmFeatures[0]); ++i) {
    if (strcmp(kArmFeatures[i].name, name) == 0) {
      return (int)((hw[kArmFeatures[i].word] >> kArmFeatures[i].bit) & 1ul);
    }
  }
  return 0; /* unknown */
}

#elif defined(__aarch64__) && defined(__APPLE__)

/* macOS reports features as sysctl flags rather than HWCAP bits. */
static const struct { const char* name; const char* sysctl; } kAppleFeatures[] = {
    {"asimd", "hw.optional.AdvSIMD"},           {"asimddp", "hw.optional.arm.FEAT_DotProd"},
    {"i8mm", "hw.optional.arm.FEAT_I8MM"},      {"bf16", "hw.optional.arm.FEAT_BF16"},
    {"asimdfhm", "hw.optional.arm.FEAT_FHM"},   {"fphp", "hw.optional.arm.FEAT_FP16"},
};

static int apple_has(const char* name) {
  for (size_t i = 0; i < sizeof(kAppleFeatures) / sizeof(kAppleFeatures[0]); ++i) {
    if (strcmp(kAppleFeatures[i].name, name) != 0) continue;
    int value = 0;
    size_t len = sizeof(value);
    return sysctlbyname(kAppleFeatures[i].sysctl, &value, &len, NULL, 0) == 0 && value != 0;
  }
  return 0; /* unknown */
}

#endif

int qc_cpu_missing_features(const char* const* features, int n, char* missing,
                            size_t missing_len) {
  if (missing != NULL && missing_len > 0) missing[0] = '\0';
  if (n < 0 || (n > 0 && features == NULL)) return -1;
#if defined(__x86_64__)
  x86_cpu cpu;
  x86_probe(&cpu);
#elif defined(__aarch64__) && defined(__linux__)
  unsigned long hw[2] = {getauxval(AT_HWCAP), getauxval(AT_HWCAP2)};
#endif
  int count = 0;
  size_t pos = 0;
  for (int i = 0; i < n; ++i) {
    const char* name = features[i];
    int has = 0;
    if (name != NULL) {
#if defined(__x86_64__)
      has = x86_has(&cpu, name);
#elif defined(__aarch64__) && defined(__linux__)
      has = arm_has(hw, name);
#elif defined(__aarch64__) && defined(__APPLE__)
      has = apple_has(name);
#endif
    }
    if (!has) {
      ++count;
      pos = list_append(missing, missing_len, pos, name);
    }
  }
  return count;
}

int qc_cpu_request_amx(void) {
#if defined(__x86_64__) && defined(__linux__) && defined(SYS_arch_prctl)
  /* ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 (Linux >= 5.16). */
  return syscall(SYS_arch_prctl, 0x1023, 18) == 0 ? 0 : -1;
#else
  return -1;
#endif
}

/* ======================================================================== */
/* Checksum (algorithm documented in qc_runtime.h)                           */
/* ======================================================================== */

#define QC64_K 0x9E3779B97F4A7C15ull
#define QC64_P 0xBF58476D1CE4E5B9ull
#define QC64_M1 0xFF51AFD7ED558CCDull
#define QC64_M2 0xC4CEB9FE1A85EC53ull

static inline uint64_t qc64_load(const unsigned char* p) {
  uint64_t v;
  memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  v = __builtin_bswap64(v);
#endif
  return v;
}

static inline uint64_t qc64_mix(uint64_t x) {
  x ^= x >> 31;
  x *= QC64_P;
  x ^= x >> 29;
  return x;
}

uint64_t qc_checksum64(const void* data, size_t n) {
  const unsigned char* p = (const unsigned char*)data;
  size_t words = n / 8;
  uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  uint64_t key = QC64_K; /* (j + 1) * K for the current j */
  size_t j = 0;
  for (; j + 4 <= words; j += 4) {
    const unsigned char* q = p + 8 * j;
    a0 += qc64_mix(qc64_load(q) + key);
    a1 += qc64_mix(qc64_load(q + 8) + key + QC64_K);
    a2 += qc64_mix(qc64_load(q + 16) + key + 2 * QC64_K);
    a3 += qc64_mix(qc64_load(q + 24) + key + 3 * QC64_K);
    key += 4 * QC64_K;
  }
  for (; j < words; ++j) {
    a0 += qc64_mix(qc64_load(p + 8 * j) + key);
    key += QC64_K;
  }
  size_t rest = n & 7;
  if (rest != 0) {
    uint64_t t = 0;
    const unsigned char* q = p + 8 * words;
    for (size_t i = 0; i < rest; ++i) t |= (uint64_t)q[i] << (8 * i);
    a0 += qc64_mix(t + key);
  }
  uint64_t h = (a0 + a1 + a2 + a3) ^ (uint64_t)n ^ QC64_K;
  h ^= h >> 33;
  h *= QC64_M1;
  h ^= h >> 33;
  h *= QC64_M2;
  h ^= h >> 33;
  return h;
}

/* ======================================================================== */
/* TVM backend hooks (strong definitions of the kernels' weak symbols)       */
/* ======================================================================== */

void* __TVMBackendParallelLaunch = (void*)qc_parallel_launch;
void* __TVMBackendAllocWorkspace = (void*)qc_workspace_alloc;
void* __TVMBackendFreeWorkspace = (void*)qc_workspace_free;
