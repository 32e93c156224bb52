/* generate.c: greedy generation with a qcompile decoder library, from C, through its session API.
 *
 *   gcc -O2 -std=c11 -DQC_NAME=llama generate.c -I out -L out -l:llama.so -Wl,-rpath,out -lm -o generate
 *   ./generate 32 1 2 3 4          (32 new tokens after the prompt 1 2 3 4)
 *
 * Prints the new token ids on one line, then the timing on stderr. The library keeps the KV
 * cache: the app only passes token ids in and reads logits out.
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c11 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#ifndef QC_NAME
#error "compile with -DQC_NAME=<model>, the stem of the artifact's <model>.so and <model>.h"
#endif
#define QC_STR_(x) #x
#define QC_STR(x) QC_STR_(x)
#define QC_CAT_(a, b) a##_##b
#define QC_CAT(a, b) QC_CAT_(a, b)
#define QC(name) QC_CAT(QC_NAME, name)
#include QC_STR(QC_NAME.h)

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t argmax(const float* x, int n) {
  int64_t best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s NEW_TOKENS PROMPT_ID...\n", argv[0]);
    return 2;
  }
  int steps = atoi(argv[1]), n = argc - 2;
  int64_t* prompt = malloc(sizeof(int64_t) * n);
  for (int i = 0; i < n; ++i) prompt[i] = atoll(argv[2 + i]);
  static float logits[QC(vocab_size)];
  QC(model)* model;
  QC(session)* session;
  if (QC(create)(NULL, &model) != 0) {
    fprintf(stderr, "create failed: %s\n", QC(last_error)(NULL));
    return 1;
  }
  if (QC(session_create)(model, 0, &session) != 0) {
    fprintf(stderr, "session failed: %s\n", QC(last_error)(model));
    return 1;
  }
  double t0 = seconds();
  if (QC(session_prefill)(session, prompt, n, logits) != 0) {
    fprintf(stderr, "prefill failed: %s\n", QC(last_error)(model));
    return 1;
  }
  double t1 = seconds();
  for (int i = 0; i < steps; ++i) {
    int64_t next = argmax(logits, QC(vocab_size));
    printf("%s%lld", i ? "," : "", (long long)next);
    if (i + 1 < steps && QC(session_decode)(session, next, logits) != 0) {
      fprintf(stderr, "\ndecode failed at step %d: %s\n", i, QC(last_error)(model));
      return 1;
    }
  }
  double t2 = seconds();
  printf("\n");
  fprintf(stderr, "prefill %d tokens %.2f ms; decode %.1f tok/s\n", n, (t1 - t0) * 1e3,
          steps > 1 ? (steps - 1) / (t2 - t1) : 0.0);
  QC(session_destroy)(session);
  QC(destroy)(model);
  free(prompt);
  return 0;
}
