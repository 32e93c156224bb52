/* CHECK(cond, fmt, ...) for the C API test drivers: on failure, "FAIL file:line: cond: message"
 * on stdout (where the tests read the drivers' reports) and exit status 1. */
#ifndef QC_TEST_CHECK_H
#define QC_TEST_CHECK_H
#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond, ...)                                              \
  do {                                                                \
    if (!(cond)) {                                                    \
      fprintf(stdout, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stdout, __VA_ARGS__);                                   \
      fprintf(stdout, "\n");                                          \
      exit(1);                                                        \
    }                                                                 \
  } while (0)

#endif
