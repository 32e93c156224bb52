/*
 * qc_tune_shim.c - linked into `qcompile tune`'s candidate libraries only (never into an artifact).
 *
 * A candidate kernel is timed by TVM (time_evaluator, locally or over RPC), but its parallel
 * loops must run on the artifact's own thread pool (qc_runtime.c), whose launch cost is what a
 * built library pays: TVM's pool costs several microseconds more per launch, which would make
 * every small kernel look better serial than it is.  qc_runtime.c's TVM hooks are hidden
 * symbols, so TVM's loader cannot replace them; this constructor creates the pool and binds it to
 * the thread that loads the library, which is the thread TVM then calls the kernel from.
 */
#include "qc_runtime.h"

static qc_pool* tune_pool;

__attribute__((constructor)) static void qc_tune_bind_pool(void) {
  tune_pool = qc_pool_create(0); /* QCOMPILE_NUM_THREADS, else every core: as a library would */
  if (tune_pool != NULL) qc_pool_bind(tune_pool);
}

__attribute__((destructor)) static void qc_tune_free_pool(void) {
  if (tune_pool != NULL) {
    qc_pool_bind(NULL);
    qc_pool_destroy(tune_pool);
  }
}
