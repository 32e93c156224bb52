/* vector_runner.c: run a qcompile library once on inputs read from files, for machines (or
 * emulators) with no Python: qcompile.testing.device_run writes the test vectors' inputs, runs
 * this program, and compares the outputs it wrote.
 *
 *   CC -O1 -std=c11 -DQC_NAME=mlp vector_runner.c -I OUT -L OUT -l:mlp.so -Wl,-rpath,OUT -o run_vectors
 *   ./run_vectors DIR [--trace]
 *
 * DIR/in<i>.dims holds input i's "ndim d0 d1 ...", DIR/in<i>.bin its bytes (row-major, in the
 * model's dtype). The program writes DIR/out<o>.dims and DIR/out<o>.bin the same way. Exit status
 * 0 when the run succeeded; otherwise the library's message is on stderr.
 *
 * With --trace it also writes DIR/trace.bin, what the library's step observer saw: per call
 * (little-endian) int32 step, int32 after, string node, int32 count, then count times string name,
 * int32 dtype, int32 ndim, int64 dims[ndim], int64 nbytes, the bytes; a string is int32 length and
 * its bytes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef QC_NAME
#error "compile with -DQC_NAME=<model>"
#endif
#define QC_STR_(x) #x
#define QC_STR(x) QC_STR_(x)
#define QC_CAT_(a, b) a##_##b
#define QC_CAT(a, b) QC_CAT_(a, b)
#define QC(name) QC_CAT(QC_NAME, name)
#include QC_STR(QC_NAME.h)

static size_t element_size(int dtype) {
  switch (dtype) {
    case 1: case 6: return 4;            /* float32, int32 */
    case 7: return 8;                    /* int64 */
    case 10: case 16: return 2;          /* float16, bfloat16 */
    default: return 1;                   /* uint8, int8, bool */
  }
}

static void* read_file(const char* path, size_t* size) {
  FILE* f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  void* data = malloc(n > 0 ? (size_t)n : 1);
  *size = fread(data, 1, (size_t)n, f);
  fclose(f);
  return data;
}

static FILE* trace;

static void put_string(const char* text) {
  int32_t n = (int32_t)strlen(text);
  fwrite(&n, sizeof n, 1, trace);
  fwrite(text, 1, (size_t)n, trace);
}

static void observe(void* user, int32_t step, int32_t after, const char* node, int32_t count,
                    const char* const* names, const QC(tensor)* values) {
  (void)user;
  fwrite(&step, sizeof step, 1, trace);
  fwrite(&after, sizeof after, 1, trace);
  put_string(node);
  fwrite(&count, sizeof count, 1, trace);
  for (int i = 0; i < count; ++i) {
    put_string(names[i]);
    fwrite(&values[i].dtype, sizeof(int32_t), 1, trace);
    fwrite(&values[i].ndim, sizeof(int32_t), 1, trace);
    fwrite(values[i].dims, sizeof(int64_t), (size_t)values[i].ndim, trace);
    int64_t n = (int64_t)values[i].capacity;
    fwrite(&n, sizeof n, 1, trace);
    if (n) fwrite(values[i].data, 1, (size_t)n, trace);
  }
}

static int fail(const char* what, const char* detail) {
  fprintf(stderr, "run_vectors: %s%s\n", what, detail ? detail : "");
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3 || (argc == 3 && strcmp(argv[2], "--trace")))
    return fail("usage: run_vectors DIR [--trace]", NULL);
  const char* dir = argv[1];
  char path[4096];
  int nin = QC(num_inputs)(), nout = QC(num_outputs)();
  QC(tensor)* in = calloc((size_t)(nin > 0 ? nin : 1), sizeof(QC(tensor)));
  QC(tensor)* out = calloc((size_t)(nout > 0 ? nout : 1), sizeof(QC(tensor)));
  for (int i = 0; i < nin; ++i) {
    snprintf(path, sizeof path, "%s/in%d.dims", dir, i);
    FILE* f = fopen(path, "r");
    if (!f || fscanf(f, "%d", &in[i].ndim) != 1) return fail("cannot read ", path);
    for (int d = 0; d < in[i].ndim; ++d) {
      long long v;
      if (fscanf(f, "%lld", &v) != 1) return fail("cannot read a dim from ", path);
      in[i].dims[d] = v;
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/in%d.bin", dir, i);
    size_t size;
    in[i].data = read_file(path, &size);
    if (!in[i].data) return fail("cannot read ", path);
    in[i].dtype = QC(input_info)(i)->dtype;
  }
  for (int o = 0; o < nout; ++o) {
    const QC(tensor_info)* info = QC(output_info)(o);
    size_t n = element_size(info->dtype);
    for (int d = 0; d < info->ndim; ++d) n *= (size_t)info->max_dims[d];
    out[o].data = malloc(n ? n : 1);
    out[o].capacity = n;
    out[o].dtype = info->dtype;
  }
  QC(options) opt = {1};
  QC(model)* m = NULL;
  if (QC(create)(&opt, &m) != 0) return fail("create: ", QC(last_error)(NULL));
  if (argc == 3) {
    snprintf(path, sizeof path, "%s/trace.bin", dir);
    if (!(trace = fopen(path, "wb"))) return fail("cannot write ", path);
    if (QC(set_step_observer)(m, observe, NULL) != 0) return fail("set_step_observer: ", QC(last_error)(m));
  }
  if (QC(run)(m, in, nin, out, nout) != 0) return fail("run: ", QC(last_error)(m));
  for (int o = 0; o < nout; ++o) {
    size_t n = element_size(out[o].dtype);
    snprintf(path, sizeof path, "%s/out%d.dims", dir, o);
    FILE* f = fopen(path, "w");
    if (!f) return fail("cannot write ", path);
    fprintf(f, "%d", out[o].ndim);
    for (int d = 0; d < out[o].ndim; ++d) {
      fprintf(f, " %lld", (long long)out[o].dims[d]);
      n *= (size_t)out[o].dims[d];
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/out%d.bin", dir, o);
    f = fopen(path, "wb");
    if (!f || fwrite(out[o].data, 1, n, f) != n) return fail("cannot write ", path);
    fclose(f);
  }
  if (trace && fclose(trace)) return fail("cannot write the trace", NULL);
  QC(destroy)(m);
  return 0;
}
