/* run_model.c: run a qcompile artifact once on deterministic inputs and print its outputs.
 *
 * The same source works for any model: QC_NAME is the artifact's name (the stem of NAME.so and
 * NAME.h, which is also the prefix of every symbol in them). QC(create) expands to NAME_create.
 *
 *   gcc -O2 -std=c11 -DQC_NAME=mlp run_model.c -I out -L out -l:mlp.so -Wl,-rpath,out -lm -o run_model
 *   ./run_model batch=2
 *
 * Arguments:
 *   DIM=VALUE   value of a symbolic dim (default 1), e.g. batch=1 seq=5 past=0
 *   INPUT%K     fill the integer input INPUT with i % K instead of i % 7 (e.g. token_type_ids%2)
 *   -t N        threads per instance (default 0: $QCOMPILE_NUM_THREADS, else all cores)
 *   -n N        how many leading values of each output to print (default 8)
 *
 * Inputs, element i of each (row-major): floats sin(i), integers i % 7, bools (i % 2) != 0.
 * Every output is printed as its shape, its first values and the sum of all its values.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef QC_NAME
#error "compile with -DQC_NAME=<model>, the stem of the artifact's <model>.so and <model>.h"
#endif
#define QC_STR_(x) #x
#define QC_STR(x) QC_STR_(x)
#define QC_CAT_(a, b) a##_##b
#define QC_CAT(a, b) QC_CAT_(a, b)
#define QC(name) QC_CAT(QC_NAME, name) /* QC(run) -> mlp_run */
#include QC_STR(QC_NAME.h)              /* "mlp.h" */

/* dtype codes are ONNX TensorProto codes (the header's NAME_dtype enum) */
enum { F32 = 1, U8 = 2, I8 = 3, I32 = 6, I64 = 7, BOOL = 9, F16 = 10, BF16 = 16 };

static const char* dtype_name(int t) {
  switch (t) {
    case F32: return "float32";
    case U8: return "uint8";
    case I8: return "int8";
    case I32: return "int32";
    case I64: return "int64";
    case BOOL: return "bool";
    case F16: return "float16";
    case BF16: return "bfloat16";
    default: return "unknown";
  }
}

static size_t dtype_size(int t) {
  switch (t) {
    case I64: return 8;
    case F32: case I32: return 4;
    case F16: case BF16: return 2;
    default: return 1;
  }
}

static int is_float(int t) { return t == F32 || t == F16 || t == BF16; }

/* float16 / bfloat16 <-> float, round to nearest even */
static float f16_to_f32(uint16_t h) {
  int e = (h >> 10) & 31, m = h & 1023;
  float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), e - 25);
  return (h & 0x8000) ? -v : v;
}

static uint16_t f32_to_f16(float f) {
  uint16_t sign = signbit(f) ? 0x8000 : 0;
  f = fabsf(f);
  if (isnan(f)) return sign | 0x7e00;
  if (f >= 65520.0f) return sign | 0x7c00;
  if (f == 0.0f) return sign;
  int e;
  frexpf(f, &e);      /* f = m * 2^e, 0.5 <= m < 1 */
  if (e < -13) e = -13; /* subnormals: steps of 2^-24 */
  return sign | (uint16_t)(((e + 14) << 10) + lrintf(ldexpf(f, 11 - e)) - 1024);
}

static float bf16_to_f32(uint16_t h) {
  uint32_t x = (uint32_t)h << 16;
  float f;
  memcpy(&f, &x, 4);
  return f;
}

static uint16_t f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if (isnan(f)) return (uint16_t)((x >> 16) | 0x40);
  return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

static double get_float(const void* p, int t, size_t i) {
  switch (t) {
    case F32: return ((const float*)p)[i];
    case F16: return f16_to_f32(((const uint16_t*)p)[i]);
    default: return bf16_to_f32(((const uint16_t*)p)[i]);
  }
}

static long long get_int(const void* p, int t, size_t i) {
  switch (t) {
    case I64: return ((const int64_t*)p)[i];
    case I32: return ((const int32_t*)p)[i];
    case I8: return ((const int8_t*)p)[i];
    default: return ((const uint8_t*)p)[i]; /* uint8, bool */
  }
}

static void put(void* p, int t, size_t i, double v) {
  switch (t) {
    case F32: ((float*)p)[i] = (float)v; break;
    case F16: ((uint16_t*)p)[i] = f32_to_f16((float)v); break;
    case BF16: ((uint16_t*)p)[i] = f32_to_bf16((float)v); break;
    case I64: ((int64_t*)p)[i] = (int64_t)v; break;
    case I32: ((int32_t*)p)[i] = (int32_t)v; break;
    case I8: ((int8_t*)p)[i] = (int8_t)v; break;
    case BOOL: ((uint8_t*)p)[i] = v != 0; break;
    default: ((uint8_t*)p)[i] = (uint8_t)v; break;
  }
}

/* ---- symbolic dims: plain names ("seq") are set on the command line; expressions such as
 * "past+seq" or "2*seq+1" (sums of [k*]name and integers) are computed from them. */
#define MAX_SYMS 32
typedef struct { const char* name; long long value, bound; } sym;
static sym syms[MAX_SYMS];
static int nsyms;

static int find_sym(const char* name, size_t len) {
  for (int s = 0; s < nsyms; ++s)
    if (strlen(syms[s].name) == len && strncmp(syms[s].name, name, len) == 0) return s;
  return -1;
}

static int is_plain_name(const char* s) { return strpbrk(s, "+*") == NULL; }

static int eval_dim(const char* expr, long long* out) {
  long long total = 0;
  for (const char* p = expr;;) {
    size_t len = strcspn(p, "+"); /* one term: "12", "name" or "k*name" */
    char* end;
    long long k = strtoll(p, &end, 10);
    if (end != p && end == p + len) {
      total += k;
    } else {
      const char* name = p;
      if (end != p && *end == '*') name = end + 1;
      else k = 1;
      int s = find_sym(name, (size_t)(p + len - name));
      if (s < 0) return -1;
      total += k * syms[s].value;
    }
    if (!p[len]) break;
    p += len + 1; /* past the '+' */
  }
  *out = total;
  return 0;
}

static void print_shape(const QC(tensor_info)* info) {
  printf("%s: %s [", info->name, dtype_name(info->dtype));
  for (int d = 0; d < info->ndim; ++d) {
    if (info->dim_names[d]) printf("%s%s<=%lld", d ? ", " : "", info->dim_names[d], (long long)info->max_dims[d]);
    else printf("%s%lld", d ? ", " : "", (long long)info->dims[d]);
  }
  printf("]\n");
}

static double now_ms(void) {
  struct timespec ts;
  timespec_get(&ts, TIME_UTC);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char** argv) {
  const int nin = QC(num_inputs)(), nout = QC(num_outputs)();
  QC(tensor)* in = calloc((size_t)nin + 1, sizeof *in);
  QC(tensor)* out = calloc((size_t)nout + 1, sizeof *out);
  long long* modulus = calloc((size_t)nin + 1, sizeof *modulus);
  QC(options) options = {0};
  long long show = 8;
  if (!in || !out || !modulus) return 1;

  printf("model %s\n", QC(version)());
  for (int i = 0; i < nin; ++i) {
    const QC(tensor_info)* info = QC(input_info)(i);
    printf("input %d ", i);
    print_shape(info);
    modulus[i] = info->dtype == BOOL ? 2 : 7;
    for (int d = 0; d < info->ndim; ++d) /* collect the plain symbolic dims and their bounds */
      if (info->dim_names[d] && is_plain_name(info->dim_names[d]) &&
          find_sym(info->dim_names[d], strlen(info->dim_names[d])) < 0 && nsyms < MAX_SYMS)
        syms[nsyms++] = (sym){info->dim_names[d], 1, info->max_dims[d]};
  }
  for (int o = 0; o < nout; ++o) {
    printf("output %d ", o);
    print_shape(QC(output_info)(o));
  }

  for (int a = 1; a < argc; ++a) { /* DIM=VALUE, INPUT%K, -t N, -n N */
    const char* arg = argv[a];
    size_t len = strcspn(arg, "=%");
    if ((!strcmp(arg, "-t") || !strcmp(arg, "-n")) && a + 1 < argc) {
      long long v = atoll(argv[++a]);
      if (arg[1] == 't') options.num_threads = (int32_t)v;
      else show = v;
    } else if (arg[len] == '=' && find_sym(arg, len) >= 0) {
      syms[find_sym(arg, len)].value = atoll(arg + len + 1);
    } else if (arg[len] == '%') {
      int i = 0;
      while (i < nin && (strlen(QC(input_info)(i)->name) != len || strncmp(QC(input_info)(i)->name, arg, len))) ++i;
      if (i == nin || is_float(QC(input_info)(i)->dtype) || atoll(arg + len + 1) <= 0) {
        fprintf(stderr, "'%s': no integer input of that name, or K <= 0\n", arg);
        return 2;
      }
      modulus[i] = atoll(arg + len + 1);
    } else {
      fprintf(stderr, "unknown argument '%s'; symbolic dims:", arg);
      for (int s = 0; s < nsyms; ++s) fprintf(stderr, " %s (at most %lld)", syms[s].name, syms[s].bound);
      fprintf(stderr, "\n");
      return 2;
    }
  }
  for (int s = 0; s < nsyms; ++s) printf("dim %s = %lld\n", syms[s].name, syms[s].value);

  /* inputs: shapes from the dims, deterministic contents */
  for (int i = 0; i < nin; ++i) {
    const QC(tensor_info)* info = QC(input_info)(i);
    size_t n = 1;
    in[i].dtype = info->dtype;
    in[i].ndim = info->ndim;
    for (int d = 0; d < info->ndim; ++d) {
      long long v = info->dims[d];
      if (info->dim_names[d] && eval_dim(info->dim_names[d], &v) != 0) {
        fprintf(stderr, "input '%s': cannot compute dim '%s'\n", info->name, info->dim_names[d]);
        return 2;
      }
      in[i].dims[d] = v;
      n *= v > 0 ? (size_t)v : 0;
    }
    in[i].data = malloc(n * dtype_size(info->dtype) + 1);
    if (!in[i].data) return 1;
    for (size_t k = 0; k < n; ++k)
      put(in[i].data, info->dtype, k, is_float(info->dtype) ? sin((double)k) : (double)((long long)k % modulus[i]));
  }
  /* outputs: buffers big enough for the largest shape the library accepts */
  for (int o = 0; o < nout; ++o) {
    const QC(tensor_info)* info = QC(output_info)(o);
    size_t n = 1;
    for (int d = 0; d < info->ndim; ++d) n *= (size_t)info->max_dims[d];
    out[o].dtype = info->dtype;
    out[o].capacity = n * dtype_size(info->dtype);
    out[o].data = malloc(out[o].capacity + 1);
    if (!out[o].data) return 1;
  }

  QC(model)* model;
  if (QC(create)(&options, &model) != 0) { /* 0 is NAME_OK */
    fprintf(stderr, "create failed: %s\n", QC(last_error)(NULL));
    return 1;
  }
  double t0 = now_ms();
  int status = QC(run)(model, in, nin, out, nout);
  double t1 = now_ms();
  if (status != 0) {
    fprintf(stderr, "run failed (status %d): %s\n", status, QC(last_error)(model));
    QC(destroy)(model);
    return 1;
  }
  printf("run ok in %.3f ms\n", t1 - t0);

  for (int o = 0; o < nout; ++o) {
    const QC(tensor_info)* info = QC(output_info)(o);
    size_t n = 1;
    printf("%s: %s [", info->name, dtype_name(out[o].dtype));
    for (int d = 0; d < out[o].ndim; ++d) {
      printf("%s%lld", d ? ", " : "", (long long)out[o].dims[d]);
      n *= (size_t)out[o].dims[d];
    }
    printf("]\n  values:");
    double fsum = 0;
    long long isum = 0;
    for (size_t k = 0; k < n; ++k) {
      if (is_float(out[o].dtype)) {
        double v = get_float(out[o].data, out[o].dtype, k);
        fsum += v;
        if ((long long)k < show) printf(" %.9g", v);
      } else {
        long long v = get_int(out[o].data, out[o].dtype, k);
        isum += v;
        if ((long long)k < show) printf(" %lld", v);
      }
    }
    if ((long long)n > show) printf(" ...");
    if (is_float(out[o].dtype)) printf("\n  sum: %.17g\n", fsum);
    else printf("\n  sum: %lld\n", isum);
  }

  QC(destroy)(model);
  for (int i = 0; i < nin; ++i) free(in[i].data);
  for (int o = 0; o < nout; ++o) free(out[o].data);
  free(in);
  free(out);
  free(modulus);
  return 0;
}
