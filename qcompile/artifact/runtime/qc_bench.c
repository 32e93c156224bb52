/*
 * qc_bench.c - times one kernel of a `qcompile tune` candidate library, on a device that cannot
 * run TVM's runtime (`qcompile tune --ssh HOST`: the tuner ships this program, the candidate and
 * its inputs there, runs it, and reads one JSON line back).  Never part of an artifact.
 *
 *   qc_bench LIB KERNEL SPEC REPEAT MIN_MS
 *
 * SPEC lists the kernel's arguments, one per line, in order:
 *   t CODE BITS NDIM D0 D1 ... FILE WRITTEN   a tensor: DLDataType code and bits, its shape, the file
 *                                            holding its bytes, and 1 if the kernel writes it
 *   s VALUE                                  an int64 scalar
 * The kernel runs once (its written tensors are printed, in hex, for the tuner to check against
 * the reference), then REPEAT rounds of as many calls as fill MIN_MS milliseconds each are timed.
 * The candidate links qc_runtime.c and qc_tune_shim.c, so its parallel loops run on the
 * artifact's thread pool, bound to this thread when the library is loaded.
 *
 * Output: {"times_us": [per-call microseconds of each round], "outputs": ["hex", ...]}
 * Exit status: 0 ok, 2 bad arguments or files, 3 the library or kernel cannot be loaded,
 * 4 the kernel returned an error.
 */
#define _GNU_SOURCE 1

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tvm/ffi/c_api.h"

#define MAX_ARGS 32
#define MAX_DIMS 8

typedef int (*kernel_fn)(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result);

typedef struct {
  int is_tensor, written;
  int64_t scalar;
  int64_t shape[MAX_DIMS];
  DLTensor tensor;
  size_t bytes;
} arg_t;

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec * 1e-3;
}

static int read_spec(const char* path, arg_t* args, int* n) {
  FILE* f = fopen(path, "r");
  if (!f) return -1;
  char kind[4];
  *n = 0;
  while (*n < MAX_ARGS && fscanf(f, "%3s", kind) == 1) {
    arg_t* a = &args[*n];
    memset(a, 0, sizeof *a);
    if (kind[0] == 's') {
      if (fscanf(f, "%ld", &a->scalar) != 1) break;
    } else {
      int code, bits, ndim;
      char file[512];
      if (fscanf(f, "%d %d %d", &code, &bits, &ndim) != 3 || ndim < 0 || ndim > MAX_DIMS) break;
      size_t count = 1;
      for (int d = 0; d < ndim; ++d) {
        if (fscanf(f, "%ld", &a->shape[d]) != 1) goto bad;
        count *= (size_t)a->shape[d];
      }
      if (fscanf(f, "%511s %d", file, &a->written) != 2) break;
      a->is_tensor = 1;
      a->bytes = count * (size_t)(bits / 8);
      void* data = NULL;
      if (posix_memalign(&data, 64, a->bytes ? a->bytes : 64) != 0) goto bad;
      FILE* df = fopen(file, "rb");
      if (!df || fread(data, 1, a->bytes, df) != a->bytes) {
        if (df) fclose(df);
        fprintf(stderr, "qc_bench: cannot read %zu bytes from %s\n", a->bytes, file);
        goto bad;
      }
      fclose(df);
      a->tensor = (DLTensor){.data = data, .device = {kDLCPU, 0}, .ndim = ndim,
                             .dtype = {(uint8_t)code, (uint8_t)bits, 1}, .shape = a->shape};
    }
    ++*n;
  }
  fclose(f);
  return 0;
bad:
  fclose(f);
  return -1;
}

static int call(kernel_fn fn, arg_t* args, int n) {
  TVMFFIAny packed[MAX_ARGS], result;
  memset(packed, 0, sizeof packed);
  for (int i = 0; i < n; ++i) {
    if (args[i].is_tensor) {
      packed[i].type_index = kTVMFFIDLTensorPtr;
      packed[i].v_ptr = &args[i].tensor;
    } else {
      packed[i].type_index = kTVMFFIInt;
      packed[i].v_int64 = args[i].scalar;
    }
  }
  memset(&result, 0, sizeof result);
  result.type_index = kTVMFFINone;
  return fn(NULL, packed, n, &result);
}

int main(int argc, char** argv) {
  if (argc != 6) {
    fprintf(stderr, "usage: qc_bench LIB KERNEL SPEC REPEAT MIN_MS\n");
    return 2;
  }
  int repeat = atoi(argv[4]);
  double min_us = atof(argv[5]) * 1e3;
  arg_t args[MAX_ARGS];
  int n = 0;
  if (read_spec(argv[3], args, &n) != 0 || repeat < 1) {
    fprintf(stderr, "qc_bench: bad spec %s\n", argv[3]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!lib) {
    fprintf(stderr, "qc_bench: %s\n", dlerror());
    return 3;
  }
  char symbol[256];
  snprintf(symbol, sizeof symbol, "__tvm_ffi_%s", argv[2]);
  kernel_fn fn = (kernel_fn)dlsym(lib, symbol);
  if (!fn) {
    fprintf(stderr, "qc_bench: no kernel %s in %s\n", symbol, argv[1]);
    return 3;
  }
  if (call(fn, args, n) != 0) {
    fprintf(stderr, "qc_bench: the kernel returned an error\n");
    return 4;
  }
  printf("{\"times_us\": [");
  for (int r = 0; r < repeat; ++r) {
    int calls = 0;
    double start = now_us(), elapsed;
    do {
      if (call(fn, args, n) != 0) return 4;
      ++calls;
      elapsed = now_us() - start;
    } while (elapsed < min_us);
    printf("%s%.4f", r ? ", " : "", elapsed / calls);
  }
  printf("], \"outputs\": [");
  int first = 1;
  for (int i = 0; i < n; ++i) {
    if (!args[i].is_tensor || !args[i].written) continue;
    /* after every call: each writes the same values */
    printf("%s\"", first ? "" : ", ");
    const unsigned char* p = (const unsigned char*)args[i].tensor.data;
    for (size_t b = 0; b < args[i].bytes; ++b) printf("%02x", p[b]);
    printf("\"");
    first = 0;
  }
  printf("]}\n");
  return 0;
}
