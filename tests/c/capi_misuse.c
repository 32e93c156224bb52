/* C API driver for an artifact built from qcompile.zoo.make_mlp() under the name "mlp"
 * (x float32 [batch<=4, 64] -> y float32 [batch, 10]); see tests/test_c_api.py.
 *
 *   gcc -std=c11 -I OUT capi_misuse.c -L OUT -l:mlp.so -Wl,-rpath,OUT -lm -pthread
 *
 * usage: capi_misuse CMD [ARGS...]
 *   misuse          every documented misuse returns its status and a message naming the
 *                   problem, and the instance still runs correctly after each
 *   concurrent N    two instances, each run N times from its own thread at the same time
 *   shared N        one instance run N times from each of two threads, one call at a time
 *   busy N          one instance run from two threads at once, no lock: each call either runs
 *                   right or is refused with MLP_ERR_BUSY untouched (N runs each, and on until
 *                   10 calls were refused)
 *   options         num_threads = 1 and 2 give bitwise identical outputs
 *   threads T       create with num_threads = T; print the process's thread count
 *   cpu             create must fail with MLP_ERR_CPU naming "not_a_real_feature"
 * Input of batch B: x[i] = (float)sin(i + seed) for i < B*64.  Lines "REF B v0 v1 ..." give
 * the reference outputs (seed 0) for Python to check against onnxruntime.  Success ends with
 * "OK" and exit status 0; a failure prints "FAIL ..." and exits 1.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mlp.h"

#include "check.h"

enum { IN = 64, OUT = 10, MAXB = 4 };

static float ref[MAXB + 1][MAXB * OUT]; /* ref[b]: outputs for batch b, seed 0 */

static void make_input(float* x, int batch, int seed) {
  for (int i = 0; i < batch * IN; ++i) x[i] = (float)sin((double)(i + seed));
}

static mlp_tensor input(float* x, int batch) {
  mlp_tensor t;
  memset(&t, 0, sizeof t);
  t.data = x;
  t.dtype = MLP_FLOAT32;
  t.ndim = 2;
  t.dims[0] = batch;
  t.dims[1] = IN;
  return t;
}

static mlp_tensor output(float* y, size_t capacity) {
  mlp_tensor t;
  memset(&t, 0, sizeof t);
  t.data = y;
  t.dtype = MLP_FLOAT32;
  t.capacity = capacity;
  t.ndim = -7; /* run must set ndim and dims */
  for (int d = 0; d < MLP_MAX_DIMS; ++d) t.dims[d] = -7;
  return t;
}

static mlp_model* create(int num_threads) {
  mlp_options opt = {num_threads};
  mlp_model* m = (mlp_model*)1;
  int s = mlp_create(&opt, &m);
  CHECK(s == MLP_OK && m != NULL, "create: status %d: %s", s, mlp_last_error(NULL));
  return m;
}

/* run batch b (seed 0) and check the result equals ref[b] to the last bit */
static void run_and_check(mlp_model* m, int b, const char* after) {
  float x[MAXB * IN], y[MAXB * OUT + 1];
  make_input(x, b, 0);
  y[b * OUT] = 12345.0f; /* sentinel just past the output */
  mlp_tensor in = input(x, b), out = output(y, sizeof y);
  int s = mlp_run(m, &in, 1, &out, 1);
  CHECK(s == MLP_OK, "run after %s: status %d: %s", after, s, mlp_last_error(m));
  CHECK(out.ndim == 2 && out.dims[0] == b && out.dims[1] == OUT, "after %s: output shape %d [%lld, %lld]", after,
        out.ndim, (long long)out.dims[0], (long long)out.dims[1]);
  CHECK(memcmp(y, ref[b], sizeof(float) * (size_t)(b * OUT)) == 0, "after %s: outputs differ from the reference",
        after);
  CHECK(y[b * OUT] == 12345.0f, "after %s: run wrote past the output", after);
}

static void compute_refs(mlp_model* m) {
  for (int b = 1; b <= MAXB; ++b) {
    float x[MAXB * IN];
    make_input(x, b, 0);
    mlp_tensor in = input(x, b), out = output(ref[b], sizeof ref[b]);
    int s = mlp_run(m, &in, 1, &out, 1);
    CHECK(s == MLP_OK, "reference run, batch %d: status %d: %s", b, s, mlp_last_error(m));
  }
}

static void print_refs(void) {
  for (int b = 1; b <= MAXB; ++b) {
    printf("REF %d", b);
    for (int i = 0; i < b * OUT; ++i) printf(" %.9g", ref[b][i]);
    printf("\n");
  }
}

/* ------------------------------------------------------------------ misuse */

static int cases;

/* the call returned `status` with `want`, and last_error(m) contains `needle` (if given) */
static void expect(mlp_model* m, int status, int want, const char* needle, const char* what) {
  const char* msg = mlp_last_error(m);
  CHECK(status == want, "%s: status %d, expected %d (%s)", what, status, want, msg ? msg : "(null)");
  CHECK(msg != NULL, "%s: last_error is NULL", what);
  if (needle) CHECK(strstr(msg, needle) != NULL, "%s: last_error '%s' lacks '%s'", what, msg, needle);
  if (m) run_and_check(m, 3, what);
  printf("case %s: status %d: %s\n", what, status, needle ? msg : "-");
  ++cases;
}

static void misuse(void) {
  /* create with out == NULL */
  int s = mlp_create(NULL, NULL);
  expect(NULL, s, MLP_ERR_INVALID_ARGUMENT, "out is NULL", "create(out=NULL)");

  mlp_model* m = create(0);
  compute_refs(m);
  print_refs();

  /* NULL model */
  float x[MAXB * IN], y[MAXB * OUT + 1];
  make_input(x, 3, 0);
  mlp_tensor in = input(x, 3), out = output(y, sizeof y);
  s = mlp_run(NULL, &in, 1, &out, 1);
  expect(NULL, s, MLP_ERR_INVALID_ARGUMENT, NULL, "run(model=NULL)");
  mlp_destroy(NULL);
  CHECK(mlp_last_error(NULL) != NULL, "last_error(NULL) is NULL");

  /* info out of range */
  CHECK(mlp_num_inputs() == 1 && mlp_num_outputs() == 1, "counts %d %d", mlp_num_inputs(), mlp_num_outputs());
  CHECK(mlp_input_info(-1) == NULL && mlp_input_info(1) == NULL && mlp_input_info(1 << 30) == NULL,
        "input_info out of range is not NULL");
  CHECK(mlp_output_info(-1) == NULL && mlp_output_info(1) == NULL, "output_info out of range is not NULL");
  const mlp_tensor_info* xi = mlp_input_info(0);
  CHECK(xi && !strcmp(xi->name, "x") && xi->dtype == MLP_FLOAT32 && xi->ndim == 2 && xi->dims[0] == -1 &&
            xi->dim_names[0] && !strcmp(xi->dim_names[0], "batch") && xi->max_dims[0] == MAXB &&
            xi->dims[1] == IN && xi->dim_names[1] == NULL && xi->max_dims[1] == IN,
        "input_info(0) is wrong");
  const mlp_tensor_info* yi = mlp_output_info(0);
  CHECK(yi && !strcmp(yi->name, "y") && yi->ndim == 2 && yi->dims[0] == -1 && yi->max_dims[0] == MAXB &&
            yi->dims[1] == OUT,
        "output_info(0) is wrong");

  /* NULL arrays, wrong counts */
  expect(m, mlp_run(m, NULL, 1, &out, 1), MLP_ERR_INVALID_ARGUMENT, "inputs or outputs is NULL", "inputs=NULL");
  expect(m, mlp_run(m, &in, 1, NULL, 1), MLP_ERR_INVALID_ARGUMENT, "inputs or outputs is NULL", "outputs=NULL");
  expect(m, mlp_run(m, &in, 2, &out, 1), MLP_ERR_INVALID_ARGUMENT, "takes 1 inputs and 1 outputs, got 2 and 1",
         "num_inputs=2");
  expect(m, mlp_run(m, &in, 0, &out, 1), MLP_ERR_INVALID_ARGUMENT, "got 0 and 1", "num_inputs=0");
  expect(m, mlp_run(m, &in, 1, &out, 2), MLP_ERR_INVALID_ARGUMENT, "got 1 and 2", "num_outputs=2");
  expect(m, mlp_run(m, &in, 1, &out, -1), MLP_ERR_INVALID_ARGUMENT, "got 1 and -1", "num_outputs=-1");

  /* dtypes */
  mlp_tensor bad = in;
  bad.dtype = MLP_INT64;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_DTYPE, "input 0 ('x') has dtype 7; the model takes dtype 1",
         "input dtype int64");
  bad.dtype = 12345;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_DTYPE, "has dtype 12345", "input dtype unknown");
  mlp_tensor bad_out = out;
  bad_out.dtype = MLP_FLOAT16;
  expect(m, mlp_run(m, &in, 1, &bad_out, 1), MLP_ERR_DTYPE, "output 0 ('y') has dtype 10; the model produces dtype 1",
         "output dtype float16");

  /* ranks and dims */
  bad = in;
  bad.ndim = 1;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_SHAPE, "has 1 dims; the model takes 2", "ndim=1");
  bad.ndim = 3;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_SHAPE, "has 3 dims; the model takes 2", "ndim=3");
  bad.ndim = -1;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_SHAPE, "has -1 dims", "ndim=-1");
  bad.ndim = 1000;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_SHAPE, "has 1000 dims", "ndim=1000");
  bad = in;
  bad.dims[1] = 65;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_SHAPE, "'x' dim 1 is 65; the model takes 64", "fixed dim 65");
  bad.dims[1] = 63;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_SHAPE, "'x' dim 1 is 63; the model takes 64", "fixed dim 63");
  bad = in;
  bad.dims[0] = MAXB + 1;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_BOUNDS, "('batch') is 5; this library was built for at most 4",
         "batch above bound");
  bad.dims[0] = INT64_MAX;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_BOUNDS, "at most 4", "batch INT64_MAX");
  bad = in;
  bad.dims[0] = -1;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_SHAPE, "'x' dim 0 is negative", "batch=-1");
  bad = in;
  bad.dims[1] = -64;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_SHAPE, "'x' dim 1 is negative", "fixed dim -64");

  /* data and capacity */
  bad = in;
  bad.data = NULL;
  expect(m, mlp_run(m, &bad, 1, &out, 1), MLP_ERR_INVALID_ARGUMENT, "input 0 ('x') data is NULL", "input data NULL");
  bad_out = out;
  bad_out.capacity = 3 * OUT * sizeof(float) - 1;
  expect(m, mlp_run(m, &in, 1, &bad_out, 1), MLP_ERR_INVALID_ARGUMENT, "'y') needs 120 bytes; its buffer has 119",
         "capacity too small");
  bad_out.capacity = 0;
  expect(m, mlp_run(m, &in, 1, &bad_out, 1), MLP_ERR_INVALID_ARGUMENT, "needs 120 bytes; its buffer has 0",
         "capacity 0");
  bad_out = out;
  bad_out.data = NULL;
  expect(m, mlp_run(m, &in, 1, &bad_out, 1), MLP_ERR_INVALID_ARGUMENT, "(data is NULL)", "output data NULL");

  /* exactly enough capacity is fine; a refused call leaves the output buffer alone */
  float exact[3 * OUT];
  mlp_tensor ok = output(exact, sizeof exact);
  CHECK(mlp_run(m, &in, 1, &ok, 1) == MLP_OK, "exact capacity: %s", mlp_last_error(m));
  CHECK(memcmp(exact, ref[3], sizeof exact) == 0, "exact capacity: wrong outputs");
  for (int i = 0; i < 3 * OUT; ++i) y[i] = -1.0f;
  bad = in;
  bad.dims[0] = MAXB + 1;
  CHECK(mlp_run(m, &bad, 1, &out, 1) == MLP_ERR_BOUNDS, "refused run");
  for (int i = 0; i < 3 * OUT; ++i) CHECK(y[i] == -1.0f, "a refused run wrote output %d", i);

  /* the messages are per instance: a second instance's error does not leak into the first */
  mlp_model* m2 = create(1);
  bad = in;
  bad.ndim = 1;
  CHECK(mlp_run(m, &bad, 1, &out, 1) == MLP_ERR_SHAPE, "m: ndim=1");
  CHECK(mlp_run(m2, &in, 1, &bad_out, 1) == MLP_ERR_INVALID_ARGUMENT, "m2: output data NULL");
  CHECK(strstr(mlp_last_error(m), "has 1 dims") && strstr(mlp_last_error(m2), "data is NULL"),
        "messages mixed up: '%s' / '%s'", mlp_last_error(m), mlp_last_error(m2));
  mlp_destroy(m2);

  /* use after destroy, double destroy, a pointer create never returned: refused without reading
   * the memory (ASan would report a heap-use-after-free otherwise) */
  s = mlp_run(m2, &in, 1, &out, 1);
  expect(NULL, s, MLP_ERR_INVALID_ARGUMENT, "mlp_run: this instance was destroyed, or is not one mlp_create returned",
         "run after destroy");
  CHECK(strstr(mlp_last_error(m2), "this instance was destroyed"), "last_error(destroyed): '%s'", mlp_last_error(m2));
  mlp_destroy(m2);
  CHECK(strstr(mlp_last_error(NULL), "mlp_destroy: this instance was destroyed"), "double destroy: '%s'",
        mlp_last_error(NULL));
  ++cases;
  s = mlp_run_device((mlp_model*)ref, &in, 1, &out, 1);
  expect(NULL, s, MLP_ERR_INVALID_ARGUMENT, "mlp_run_device: this instance was destroyed", "run(foreign pointer)");
  run_and_check(m, 3, "use after destroy");

  for (int b = 1; b <= MAXB; ++b) run_and_check(m, b, "all misuse");
  mlp_destroy(m);
  printf("%d cases\n", cases);
}

/* ------------------------------------------------------------------ threads */

typedef struct {
  mlp_model* m;
  pthread_mutex_t* mu; /* NULL: the instance is this thread's own */
  int iters, tid, errors;
} job;

static void* worker(void* arg) {
  job* j = (job*)arg;
  float x[MAXB * IN], y[MAXB * OUT];
  for (int it = 0; it < j->iters; ++it) {
    int b = 1 + (it + j->tid) % MAXB;
    make_input(x, b, 0);
    memset(y, 0, sizeof y);
    mlp_tensor in = input(x, b), out = output(y, sizeof y);
    if (j->mu) pthread_mutex_lock(j->mu);
    int s = mlp_run(j->m, &in, 1, &out, 1);
    if (j->mu) pthread_mutex_unlock(j->mu);
    if (s != MLP_OK || out.dims[0] != b || memcmp(y, ref[b], sizeof(float) * (size_t)(b * OUT)) != 0) ++j->errors;
  }
  return NULL;
}

static void run_threads(int iters, int shared) {
  mlp_model* r = create(1);
  compute_refs(r);
  mlp_destroy(r);
  print_refs();
  mlp_model* a = create(2);
  mlp_model* b = shared ? a : create(2);
  pthread_mutex_t mu;
  pthread_mutex_init(&mu, NULL);
  job jobs[2] = {{a, shared ? &mu : NULL, iters, 0, 0}, {b, shared ? &mu : NULL, iters, 1, 0}};
  pthread_t t[2];
  for (int i = 0; i < 2; ++i) CHECK(pthread_create(&t[i], NULL, worker, &jobs[i]) == 0, "pthread_create");
  for (int i = 0; i < 2; ++i) pthread_join(t[i], NULL);
  CHECK(jobs[0].errors == 0 && jobs[1].errors == 0, "%d and %d of %d runs wrong", jobs[0].errors, jobs[1].errors,
        iters);
  if (shared) { /* and handed from thread to thread, one after the other */
    for (int i = 0; i < 6; ++i) {
      job one = {a, NULL, iters / 10 + 1, i, 0};
      CHECK(pthread_create(&t[0], NULL, worker, &one) == 0, "pthread_create");
      pthread_join(t[0], NULL);
      CHECK(one.errors == 0, "hand-off %d: %d runs wrong", i, one.errors);
    }
  }
  pthread_mutex_destroy(&mu);
  if (!shared) mlp_destroy(b);
  mlp_destroy(a);
  printf("%d runs per thread\n", iters);
}

/* Two threads on one instance with no lock: the library must refuse the overlapping calls
 * (MLP_ERR_BUSY, message on the calling thread, outputs untouched), and every call it runs must
 * be right. Runs continue past N until 10 refusals were seen (a 2-core machine overlaps fast). */
typedef struct {
  mlp_model* m;
  int iters, tid, ran, wrong;
  int* refused; /* shared, atomic */
} busy_job;

static void* busy_worker(void* arg) {
  busy_job* j = (busy_job*)arg;
  float x[MAXB * IN], y[MAXB * OUT];
  for (int it = 0; it < 200 * j->iters && (it < j->iters || __atomic_load_n(j->refused, __ATOMIC_RELAXED) < 10);
       ++it) {
    int b = 1 + (it + j->tid) % MAXB;
    make_input(x, b, 0);
    memset(y, 0, sizeof y);
    mlp_tensor in = input(x, b), out = output(y, sizeof y);
    int s = mlp_run(j->m, &in, 1, &out, 1);
    if (s == MLP_OK) {
      ++j->ran;
      if (out.dims[0] != b || memcmp(y, ref[b], sizeof(float) * (size_t)(b * OUT)) != 0) ++j->wrong;
    } else if (s == MLP_ERR_BUSY) {
      __atomic_add_fetch(j->refused, 1, __ATOMIC_RELAXED);
      const char* msg = mlp_last_error(NULL);
      if (out.ndim != -7 || y[0] != 0.0f || !strstr(msg, "mlp_run: the instance is running a call on another thread"))
        ++j->wrong;
    } else {
      ++j->wrong;
    }
  }
  return NULL;
}

static void busy(int iters) {
  mlp_model* m = create(1);
  compute_refs(m);
  int refused = 0;
  busy_job jobs[2] = {{m, iters, 0, 0, 0, &refused}, {m, iters, 1, 0, 0, &refused}};
  pthread_t t[2];
  for (int i = 0; i < 2; ++i) CHECK(pthread_create(&t[i], NULL, busy_worker, &jobs[i]) == 0, "pthread_create");
  for (int i = 0; i < 2; ++i) pthread_join(t[i], NULL);
  CHECK(jobs[0].wrong + jobs[1].wrong == 0, "%d calls wrong", jobs[0].wrong + jobs[1].wrong);
  CHECK(refused >= 10, "only %d overlapping calls refused in %d runs", refused, jobs[0].ran + jobs[1].ran);
  run_and_check(m, 3, "busy refusals");
  mlp_destroy(m);
  printf("%d runs, %d refused as busy\n", jobs[0].ran + jobs[1].ran, refused);
}

/* ------------------------------------------------------------------ options, threads, cpu */

static void options(void) {
  static float y1[MAXB * OUT], y2[MAXB * OUT];
  mlp_model* one = create(1);
  mlp_model* two = create(2);
  for (int b = 1; b <= MAXB; ++b)
    for (int seed = 0; seed < 50; ++seed) {
      float x[MAXB * IN];
      make_input(x, b, seed);
      mlp_tensor in = input(x, b), o1 = output(y1, sizeof y1), o2 = output(y2, sizeof y2);
      CHECK(mlp_run(one, &in, 1, &o1, 1) == MLP_OK && mlp_run(two, &in, 1, &o2, 1) == MLP_OK, "run");
      CHECK(memcmp(y1, y2, sizeof(float) * (size_t)(b * OUT)) == 0, "batch %d seed %d: 1 and 2 threads differ", b,
            seed);
    }
  mlp_destroy(one);
  mlp_destroy(two);
}

static int process_threads(void) {
  FILE* f = fopen("/proc/self/status", "r");
  char line[256];
  int n = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "Threads:", 8)) n = atoi(line + 8);
  if (f) fclose(f);
  return n;
}

static void threads(int num_threads) {
  int before = process_threads();
  mlp_model* m = create(num_threads);
  int after = process_threads();
  compute_refs(m);
  run_and_check(m, 2, "a second run");
  mlp_destroy(m);
  printf("threads %d\n", after - before + 1);
}

static void* last_create_error(void* out) {
  *(const char**)out = mlp_last_error(NULL);
  return NULL;
}

static void cpu(void) {
  mlp_model* m = (mlp_model*)1;
  int s = mlp_create(NULL, &m);
  const char* msg = mlp_last_error(NULL);
  printf("create: status %d: %s\n", s, msg);
  CHECK(s == MLP_ERR_CPU, "status %d", s);
  CHECK(m == NULL, "*out is not NULL after a failed create");
  CHECK(strstr(msg, "not_a_real_feature") && strstr(msg, "lacks"), "message '%s'", msg);
  const char* other = NULL;
  pthread_t t;
  CHECK(pthread_create(&t, NULL, last_create_error, &other) == 0, "pthread_create");
  pthread_join(t, NULL);
  CHECK(other && !strstr(other, "not_a_real_feature"), "another thread sees this thread's create error");
}

int main(int argc, char** argv) {
  const char* cmd = argc > 1 ? argv[1] : "";
  int n = argc > 2 ? atoi(argv[2]) : 200;
  if (!strcmp(cmd, "misuse")) misuse();
  else if (!strcmp(cmd, "concurrent")) run_threads(n, 0);
  else if (!strcmp(cmd, "shared")) run_threads(n, 1);
  else if (!strcmp(cmd, "busy")) busy(n);
  else if (!strcmp(cmd, "options")) options();
  else if (!strcmp(cmd, "threads")) threads(n);
  else if (!strcmp(cmd, "cpu")) cpu();
  else {
    fprintf(stderr, "usage: capi_misuse misuse|concurrent N|shared N|busy N|options|threads T|cpu\n");
    return 2;
  }
  printf("OK\n");
  return 0;
}
