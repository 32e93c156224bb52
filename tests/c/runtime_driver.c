/* Test driver for qcompile/artifact/runtime/qc_runtime.c (see tests/test_runtime_c.py).
 *
 * usage: runtime_driver CMD [ARGS...]
 *   pool         launches of 1, size, 3*size, size-1 and 0 (= choose) tasks on pools of
 *                1, 2 and 4 threads, plus unbound (serial) launches
 *   concurrent   two OS threads, each with its own bound pool, launching concurrently
 *   nested       a launch from inside a task runs serially on that thread
 *   error        kernel errors raised in worker / launcher tasks reach the launcher
 *   workspace    TVM workspace hooks and qc_aligned_alloc
 *   size         prints qc_pool_size(qc_pool_create(0))
 *   features N.. prints "<count>\n<missing>\n" for qc_cpu_missing_features(N..)
 *   checksum F.. prints qc_checksum64 of each file's bytes, one decimal per line
 * Exit status 0 and "OK" on success; failures print "FAIL: ..." and exit 1.
 */
#define _GNU_SOURCE 1
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qc_runtime.h"

#define CHECK(cond, ...)                                              \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                   \
      fprintf(stderr, "\n");                                          \
      exit(1);                                                        \
    }                                                                 \
  } while (0)

typedef int (*launch_fn)(FTVMParallelLambda, void*, int);
typedef void* (*alloc_fn)(int, int, uint64_t, int, int);
typedef int (*free_fn)(int, int, void*);

/* Always launch through the hook symbol, as a kernel does. */
static int launch(FTVMParallelLambda f, void* cdata, int n) {
  return ((launch_fn)__TVMBackendParallelLaunch)(f, cdata, n);
}

/* ------------------------------------------------------------------------ */

#define MAX_TASKS 64

typedef struct {
  atomic_int count[MAX_TASKS];
  pthread_t who[MAX_TASKS];
  atomic_int bad_num_task;
  int expect_num_task;
} count_job;

static int count_task(int id, TVMParallelGroupEnv* env, void* cdata) {
  count_job* job = (count_job*)cdata;
  if (env->num_task != job->expect_num_task) atomic_fetch_add(&job->bad_num_task, 1);
  if (id < 0 || id >= MAX_TASKS) return -1;
  atomic_fetch_add(&job->count[id], 1);
  job->who[id] = pthread_self();
  return 0;
}

static void run_count(int num_task, int expect_n, int pool_size, int check_threads) {
  count_job job;
  memset(&job, 0, sizeof(job));
  job.expect_num_task = expect_n;
  int rc = launch(count_task, &job, num_task);
  CHECK(rc == 0, "launch(num_task=%d) returned %d", num_task, rc);
  CHECK(atomic_load(&job.bad_num_task) == 0, "penv->num_task != %d", expect_n);
  for (int i = 0; i < MAX_TASKS; ++i) {
    int c = atomic_load(&job.count[i]);
    CHECK(c == (i < expect_n ? 1 : 0), "task %d ran %d times (num_task=%d, n=%d)", i, c, num_task,
          expect_n);
  }
  if (check_threads) {
    /* tasks are claimed dynamically (a late worker is not waited for), so which thread runs
     * which task is not fixed; a pool of one thread, or one task, runs on the caller */
    for (int i = 0; i < expect_n; ++i) {
      int on_caller = pthread_equal(job.who[i], pthread_self()) != 0;
      if (pool_size <= 1 || expect_n == 1)
        CHECK(on_caller, "task %d of %d ran on a worker (pool size %d)", i, expect_n, pool_size);
    }
  }
}

static int cmd_pool(int iters) {
  /* unbound: serial on the caller */
  qc_pool_bind(NULL);
  run_count(0, 1, 1, 1);
  run_count(1, 1, 1, 1);
  run_count(5, 5, 1, 1);
  const int sizes[3] = {1, 2, 4};
  for (int s = 0; s < 3; ++s) {
    qc_pool* p = qc_pool_create(sizes[s]);
    CHECK(p != NULL, "qc_pool_create(%d)", sizes[s]);
    int size = qc_pool_size(p);
    CHECK(size == sizes[s], "qc_pool_size = %d, want %d", size, sizes[s]);
    qc_pool_bind(p);
    CHECK(qc_pool_current() == p, "qc_pool_current");
    for (int it = 0; it < iters; ++it) {
      int check = (it % 16) == 0;
      run_count(1, 1, size, check);
      run_count(size, size, size, check);
      run_count(3 * size, 3 * size, size, check);
      run_count(0, size, size, check);
      if (size > 2) run_count(size - 1, size - 1, size, check);
      if (size > 1) run_count(size + 1, size + 1, size, check);
    }
    qc_pool_bind(NULL);
    qc_pool_destroy(p);
  }
  /* a pool that is created and destroyed without ever launching */
  qc_pool_destroy(qc_pool_create(3));
  qc_pool_destroy(NULL);
  printf("OK\n");
  return 0;
}

/* ------------------------------------------------------------------------ */

typedef struct {
  int64_t* out; /* one slot per task */
  int64_t value;
} fill_job;

static int fill_task(int id, TVMParallelGroupEnv* env, void* cdata) {
  fill_job* job = (fill_job*)cdata;
  /* a little work so that tasks overlap */
  int64_t v = job->value;
  for (int k = 0; k < 64; ++k) v = v * 3 + k - 2 * v - v + v;
  (void)env;
  job->out[id] = job->value * 1000 + id + (v - v);
  return 0;
}

typedef struct {
  int pool_size;
  int iters;
  int64_t seed;
  int failures;
} thread_arg;

static void* concurrent_thread(void* arg) {
  thread_arg* a = (thread_arg*)arg;
  qc_pool* p = qc_pool_create(a->pool_size);
  if (p == NULL || qc_pool_size(p) != a->pool_size) {
    a->failures = -1;
    return NULL;
  }
  qc_pool_bind(p);
  int64_t out[MAX_TASKS];
  for (int it = 0; it < a->iters; ++it) {
    int n = (it % 3 == 0) ? 0 : (it % 3 == 1 ? a->pool_size : 3 * a->pool_size);
    int expect_n = n == 0 ? a->pool_size : n;
    for (int i = 0; i < MAX_TASKS; ++i) out[i] = -1;
    fill_job job = {out, a->seed + it};
    if (launch(fill_task, &job, n) != 0) ++a->failures;
    for (int i = 0; i < MAX_TASKS; ++i) {
      int64_t want = i < expect_n ? (a->seed + it) * 1000 + i : -1;
      if (out[i] != want) ++a->failures;
    }
  }
  qc_pool_bind(NULL);
  qc_pool_destroy(p);
  return NULL;
}

static int cmd_concurrent(int iters) {
  thread_arg args[2] = {{2, iters, 1, 0}, {3, iters, 1000000, 0}};
  pthread_t t[2];
  for (int i = 0; i < 2; ++i) CHECK(pthread_create(&t[i], NULL, concurrent_thread, &args[i]) == 0, "pthread_create");
  for (int i = 0; i < 2; ++i) pthread_join(t[i], NULL);
  for (int i = 0; i < 2; ++i) CHECK(args[i].failures == 0, "thread %d: %d failures", i, args[i].failures);
  printf("OK\n");
  return 0;
}

/* ------------------------------------------------------------------------ */

typedef struct {
  atomic_int inner_count[MAX_TASKS][MAX_TASKS];
  atomic_int bad;
  int inner_n;
} nested_job;

typedef struct {
  nested_job* job;
  int outer_id;
  pthread_t thread;
  int expect_n;
} inner_arg;

static int inner_task(int id, TVMParallelGroupEnv* env, void* cdata) {
  inner_arg* a = (inner_arg*)cdata;
  if (!pthread_equal(a->thread, pthread_self())) atomic_fetch_add(&a->job->bad, 1);
  if (env->num_task != a->expect_n) atomic_fetch_add(&a->job->bad, 1);
  atomic_fetch_add(&a->job->inner_count[a->outer_id][id], 1);
  return 0;
}

static int outer_task(int id, TVMParallelGroupEnv* env, void* cdata) {
  (void)env;
  nested_job* job = (nested_job*)cdata;
  inner_arg a = {job, id, pthread_self(), job->inner_n == 0 ? 1 : job->inner_n};
  return launch(inner_task, &a, job->inner_n);
}

static int cmd_nested(void) {
  qc_pool* p = qc_pool_create(4);
  CHECK(p != NULL && qc_pool_size(p) == 4, "pool");
  qc_pool_bind(p);
  const int inner[3] = {0, 3, 9};
  for (int rep = 0; rep < 50; ++rep) {
    for (int k = 0; k < 3; ++k) {
      nested_job job;
      memset(&job, 0, sizeof(job));
      job.inner_n = inner[k];
      int outer_n = 6;
      CHECK(launch(outer_task, &job, outer_n) == 0, "nested launch failed");
      CHECK(atomic_load(&job.bad) == 0, "inner tasks ran on another thread or with a wrong num_task");
      int expect_inner = inner[k] == 0 ? 1 : inner[k];
      for (int o = 0; o < MAX_TASKS; ++o) {
        for (int i = 0; i < MAX_TASKS; ++i) {
          int want = (o < outer_n && i < expect_inner) ? 1 : 0;
          CHECK(atomic_load(&job.inner_count[o][i]) == want, "inner %d/%d ran %d times", o, i,
                atomic_load(&job.inner_count[o][i]));
        }
      }
    }
  }
  /* the pool still works normally afterwards */
  run_count(0, 4, 4, 1);
  qc_pool_bind(NULL);
  qc_pool_destroy(p);
  printf("OK\n");
  return 0;
}

/* ------------------------------------------------------------------------ */

typedef struct {
  int fail_id;      /* task that fails */
  int with_message; /* raise an error message before failing */
  const char* long_part;
  atomic_int ran;
} error_job;

static int error_task(int id, TVMParallelGroupEnv* env, void* cdata) {
  (void)env;
  error_job* job = (error_job*)cdata;
  atomic_fetch_add(&job->ran, 1);
  if (id != job->fail_id) return 0;
  if (job->with_message) {
    char idbuf[16];
    snprintf(idbuf, sizeof(idbuf), "%d", id);
    const char* parts[4] = {"bad shape in task ", idbuf, NULL, job->long_part};
    TVMFFIErrorSetRaisedFromCStrParts("ValueError", parts, job->long_part ? 4 : 2);
  }
  return -1;
}

static int cmd_error(void) {
  qc_pool* p = qc_pool_create(4);
  CHECK(p != NULL && qc_pool_size(p) == 4, "pool");
  qc_pool_bind(p);
  CHECK(strcmp(qc_last_kernel_error(), "") == 0, "fresh thread has an error: %s",
        qc_last_kernel_error());
  for (int rep = 0; rep < 100; ++rep) {
    /* a failing task (on whichever thread claims it) with a message */
    error_job job = {2, 1, NULL, 0};
    qc_clear_kernel_error();
    int rc = launch(error_task, &job, 0);
    CHECK(rc != 0, "launch with a failing worker task returned 0");
    CHECK(strcmp(qc_last_kernel_error(), "ValueError: bad shape in task 2") == 0, "error = '%s'",
          qc_last_kernel_error());
    qc_clear_kernel_error();
    CHECK(strcmp(qc_last_kernel_error(), "") == 0, "not cleared");

    /* worker task failing without a message: a generic one, not a stale one */
    error_job job2 = {3, 0, NULL, 0};
    rc = launch(error_task, &job2, 8);
    CHECK(rc != 0, "launch returned 0");
    CHECK(strcmp(qc_last_kernel_error(), "RuntimeError: parallel task 3 failed") == 0,
          "error = '%s'", qc_last_kernel_error());
    qc_clear_kernel_error();

    /* the launcher's own task */
    error_job job3 = {4, 1, NULL, 0};
    rc = launch(error_task, &job3, 8);
    CHECK(rc != 0, "launch returned 0");
    CHECK(strcmp(qc_last_kernel_error(), "ValueError: bad shape in task 4") == 0, "error = '%s'",
          qc_last_kernel_error());
    qc_clear_kernel_error();

    /* a good launch afterwards succeeds and leaves no error */
    error_job ok = {-1, 0, NULL, 0};
    CHECK(launch(error_task, &ok, 0) == 0, "good launch failed");
    CHECK(atomic_load(&ok.ran) == 4, "ran %d", atomic_load(&ok.ran));
    CHECK(strcmp(qc_last_kernel_error(), "") == 0, "stale error: %s", qc_last_kernel_error());
  }
  /* serial (unbound) failure */
  qc_pool_bind(NULL);
  error_job js = {1, 1, NULL, 0};
  CHECK(launch(error_task, &js, 3) != 0, "serial launch returned 0");
  CHECK(strcmp(qc_last_kernel_error(), "ValueError: bad shape in task 1") == 0, "error = '%s'",
        qc_last_kernel_error());
  qc_pool_bind(p);
  /* truncation to QC_ERROR_LEN - 1 bytes, raised on a worker */
  static char big[5000];
  memset(big, 'x', sizeof(big) - 1);
  error_job jl = {1, 1, big, 0};
  CHECK(launch(error_task, &jl, 0) != 0, "launch returned 0");
  CHECK(strlen(qc_last_kernel_error()) == QC_ERROR_LEN - 1, "len %zu",
        strlen(qc_last_kernel_error()));
  CHECK(strncmp(qc_last_kernel_error(), "ValueError: bad shape in task 1xxx", 34) == 0, "'%.40s'",
        qc_last_kernel_error());
  /* NULL kind / parts */
  TVMFFIErrorSetRaisedFromCStrParts(NULL, NULL, 3);
  CHECK(strcmp(qc_last_kernel_error(), "Error: ") == 0, "'%s'", qc_last_kernel_error());
  qc_pool_bind(NULL);
  qc_pool_destroy(p);
  printf("OK\n");
  return 0;
}

/* ------------------------------------------------------------------------ */

static int cmd_workspace(void) {
  alloc_fn wa = (alloc_fn)__TVMBackendAllocWorkspace;
  free_fn wf = (free_fn)__TVMBackendFreeWorkspace;
  const uint64_t sizes[] = {0, 1, 7, 63, 64, 65, 1000, 4096, 1u << 20, 3u << 20};
  void* ptrs[sizeof(sizes) / sizeof(sizes[0])];
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
    ptrs[i] = wa(1, 0, sizes[i], 2, 32);
    CHECK(ptrs[i] != NULL, "workspace alloc %llu", (unsigned long long)sizes[i]);
    CHECK(((uintptr_t)ptrs[i] % 64) == 0, "misaligned %p", ptrs[i]);
    memset(ptrs[i], 0xAB, (size_t)sizes[i]);
  }
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) {
    for (size_t k = i + 1; k < sizeof(sizes) / sizeof(sizes[0]); ++k) CHECK(ptrs[i] != ptrs[k], "dup");
  }
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); ++i) CHECK(wf(1, 0, ptrs[i]) == 0, "free");
  CHECK(wa(1, 0, UINT64_MAX, 2, 32) == NULL, "UINT64_MAX alloc succeeded");
  CHECK(qc_aligned_alloc(SIZE_MAX) == NULL, "SIZE_MAX alloc succeeded");
  CHECK(qc_aligned_alloc(SIZE_MAX - 10) == NULL, "SIZE_MAX-10 alloc succeeded");
  void* z = qc_aligned_alloc(0);
  CHECK(z != NULL && ((uintptr_t)z % 64) == 0, "zero-size alloc");
  qc_aligned_free(z);
  qc_aligned_free(NULL);
  CHECK(wf(1, 0, NULL) == 0, "free(NULL)");
  printf("OK\n");
  return 0;
}

/* ------------------------------------------------------------------------ */

static int cmd_features(int argc, char** argv) {
  char missing[256];
  int n = qc_cpu_missing_features((const char* const*)argv, argc, missing, sizeof(missing));
  printf("%d\n%s\n", n, missing);
  /* truncation keeps the string terminated and the count exact */
  char tiny[4];
  int n2 = qc_cpu_missing_features((const char* const*)argv, argc, tiny, sizeof(tiny));
  CHECK(n2 == n && strlen(tiny) < sizeof(tiny), "truncated call");
  CHECK(qc_cpu_missing_features(NULL, 0, NULL, 0) == 0, "empty list");
  CHECK(qc_cpu_missing_features(NULL, 1, NULL, 0) == -1, "NULL list");
  return 0;
}

static int cmd_checksum(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    FILE* f = fopen(argv[i], "rb");
    CHECK(f != NULL, "open %s", argv[i]);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    /* offset the data by 3 bytes to exercise unaligned loads */
    unsigned char* raw = (unsigned char*)malloc((size_t)len + 3);
    CHECK(raw != NULL, "malloc");
    unsigned char* buf = raw + 3;
    CHECK(fread(buf, 1, (size_t)len, f) == (size_t)len, "read %s", argv[i]);
    fclose(f);
    printf("%llu\n", (unsigned long long)qc_checksum64(buf, (size_t)len));
    free(raw);
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s CMD [ARGS...]\n", argv[0]);
    return 2;
  }
  const char* cmd = argv[1];
  int iters = argc > 2 ? atoi(argv[2]) : 200;
  if (strcmp(cmd, "pool") == 0) return cmd_pool(iters);
  if (strcmp(cmd, "concurrent") == 0) return cmd_concurrent(argc > 2 ? iters : 20000);
  if (strcmp(cmd, "nested") == 0) return cmd_nested();
  if (strcmp(cmd, "error") == 0) return cmd_error();
  if (strcmp(cmd, "workspace") == 0) return cmd_workspace();
  if (strcmp(cmd, "size") == 0) {
    qc_pool* p = qc_pool_create(0);
    printf("%d\n", qc_pool_size(p));
    qc_pool_destroy(p);
    return 0;
  }
  if (strcmp(cmd, "features") == 0) return cmd_features(argc - 2, argv + 2);
  if (strcmp(cmd, "checksum") == 0) return cmd_checksum(argc - 2, argv + 2);
  fprintf(stderr, "unknown command %s\n", cmd);
  return 2;
}
