/* Decoder sessions from two threads, for any decoder library (see tests/test_c_api.py):
 *
 *   gcc -std=c11 -DQC_NAME=llama_kv -DQC_UP=LLAMA_KV session_threads.c -I OUT -L OUT -l:llama_kv.so -Wl,-rpath,OUT -lm -pthread
 *
 * usage: session_threads separate|shared|stale STEPS
 *   separate   two instances, a session each, one thread each: greedy decoding of STEPS tokens
 *              at the same time
 *   shared     one instance, two sessions, one thread each, no lock: a call that overlaps the
 *              other thread's is refused with ERR_BUSY and retried (the session is unchanged by
 *              a refusal, so the retry continues where it stopped)
 *   stale      no threads: calls on a destroyed session, and on a session whose instance was
 *              destroyed, are refused with ERR_INVALID_ARGUMENT and a message (not a use after free)
 * Both threads must produce exactly the tokens of a single-threaded run first (thread 1 from a
 * different prompt). Prints the reference tokens, the number of refusals, and "OK".
 */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(QC_NAME) || !defined(QC_UP)
#error "compile with -DQC_NAME=<model> -DQC_UP=<MODEL>"
#endif
#define QC_STR_(x) #x
#define QC_STR(x) QC_STR_(x)
#define QC_CAT_(a, b) a##_##b
#define QC_CAT(a, b) QC_CAT_(a, b)
#define QC(name) QC_CAT(QC_NAME, name)
#include QC_STR(QC_NAME.h)

#include "check.h"

enum { MAX_STEPS = 24, PROMPT = 3 };

typedef struct {
  QC(model) * m;
  QC(session) * s;
  int tid, steps, refused, failed;
  int64_t tokens[MAX_STEPS];
  char why[256];
} job;

static int64_t argmax(const float* x, int n) {
  int64_t best = 0;
  for (int i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

/* a call, retried while another thread holds the instance */
#define CALL(j, expr)                                                                 \
  do {                                                                               \
    int st_;                                                                         \
    while ((st_ = (expr)) == QC_CAT(QC_UP, ERR_BUSY)) ++(j)->refused;               \
    if (st_ != 0) {                                                                  \
      snprintf((j)->why, sizeof (j)->why, "status %d: %s", st_, QC(last_error)((j)->m)); \
      (j)->failed = 1;                                                               \
      return NULL;                                                                   \
    }                                                                                \
  } while (0)

static void* generate(void* arg) {
  job* j = (job*)arg;
  static __thread float logits[QC(vocab_size)];
  int64_t prompt[PROMPT] = {1 + j->tid, 7, 42 % QC(vocab_size)};
  CALL(j, QC(session_prefill)(j->s, prompt, PROMPT, logits));
  for (int i = 0; i < j->steps; ++i) {
    j->tokens[i] = argmax(logits, QC(vocab_size));
    if (i + 1 < j->steps) CALL(j, QC(session_decode)(j->s, j->tokens[i], logits));
  }
  CALL(j, QC(session_reset)(j->s));
  return NULL;
}

static QC(model) * create(void) {
  QC(options) opt = {2};
  QC(model)* m = NULL;
  CHECK(QC(create)(&opt, &m) == 0, "create: %s", QC(last_error)(NULL));
  return m;
}

static QC(session) * session(QC(model) * m) {
  QC(session)* s = NULL;
  CHECK(QC(session_create)(m, 0, &s) == 0, "session_create: %s", QC(last_error)(m));
  return s;
}

static void stale(void) {
  QC(model)* m = create();
  QC(session)* s = session(m);
  QC(session)* gone = session(m);
  QC(session_destroy)(gone);
  float* logits = malloc(sizeof(float) * QC(vocab_size));
  int64_t token = 1;
  int st = QC(session_decode)(gone, token, logits);
  CHECK(st == QC_CAT(QC_UP, ERR_INVALID_ARGUMENT) && strstr(QC(last_error)(NULL), "this session was destroyed"),
        "decode on a destroyed session: %d '%s'", st, QC(last_error)(NULL));
  CHECK(QC(session_position)(gone) == -1, "position of a destroyed session");
  QC(session_destroy)(gone); /* twice: nothing happens */
  CHECK(QC(session_decode)(s, token, logits) == 0, "decode: %s", QC(last_error)(m));
  QC(destroy)(m);
  st = QC(session_prefill)(s, &token, 1, logits);
  CHECK(st == QC_CAT(QC_UP, ERR_INVALID_ARGUMENT) && strstr(QC(last_error)(NULL), "this instance was destroyed"),
        "prefill after its instance was destroyed: %d '%s'", st, QC(last_error)(NULL));
  CHECK(QC(session_position)(s) == 1, "the session keeps its state: %lld", (long long)QC(session_position)(s));
  QC(session_destroy)(s);
  free(logits);
  printf("OK\n");
}

int main(int argc, char** argv) {
  const char* mode = argc > 1 ? argv[1] : "";
  int steps = argc > 2 ? atoi(argv[2]) : 16;
  if (!strcmp(mode, "stale")) {
    stale();
    return 0;
  }
  CHECK(!strcmp(mode, "separate") || !strcmp(mode, "shared"), "usage: session_threads separate|shared|stale STEPS");
  CHECK(steps > 0 && steps <= MAX_STEPS && PROMPT + steps <= QC(max_context), "steps %d", steps);
  /* the reference, one thread at a time */
  job ref[2];
  QC(model)* rm = create();
  for (int t = 0; t < 2; ++t) {
    memset(&ref[t], 0, sizeof ref[t]);
    ref[t] = (job){.m = rm, .s = session(rm), .tid = t, .steps = steps};
    generate(&ref[t]);
    CHECK(!ref[t].failed, "reference %d: %s", t, ref[t].why);
    QC(session_destroy)(ref[t].s);
    printf("REF %d", t);
    for (int i = 0; i < steps; ++i) printf(" %lld", (long long)ref[t].tokens[i]);
    printf("\n");
  }
  QC(destroy)(rm);

  int shared = !strcmp(mode, "shared");
  QC(model)* m[2];
  m[0] = create();
  m[1] = shared ? m[0] : create();
  job jobs[2];
  for (int round = 0; round < 20; ++round) {
    pthread_t th[2];
    for (int t = 0; t < 2; ++t) {
      memset(&jobs[t], 0, sizeof jobs[t]);
      jobs[t] = (job){.m = m[t], .s = session(m[t]), .tid = t, .steps = steps};
      CHECK(pthread_create(&th[t], NULL, generate, &jobs[t]) == 0, "pthread_create");
    }
    for (int t = 0; t < 2; ++t) pthread_join(th[t], NULL);
    for (int t = 0; t < 2; ++t) {
      CHECK(!jobs[t].failed, "round %d thread %d: %s", round, t, jobs[t].why);
      CHECK(!memcmp(jobs[t].tokens, ref[t].tokens, sizeof(int64_t) * (size_t)steps),
            "round %d thread %d: tokens differ from the single-threaded run", round, t);
      QC(session_destroy)(jobs[t].s);
    }
    if (round == 0) printf("refused %d\n", jobs[0].refused + jobs[1].refused);
  }
  QC(destroy)(m[0]);
  if (!shared) QC(destroy)(m[1]);
  printf("OK\n");
  return 0;
}
