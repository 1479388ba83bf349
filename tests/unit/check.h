/* check: the smallest test harness that does the job. CHECK(cond) prints
 * file:line and the expression when cond is false and counts the failure;
 * CHECK_DONE() prints a summary and is what main returns (non-zero when any
 * check failed). Header-only: each test is one translation unit. */
#ifndef QUOTECACHE_TEST_CHECK_H
#define QUOTECACHE_TEST_CHECK_H

#include <stdio.h>

static int check_total;
static int check_failed;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        check_total++;                                                                \
        if (!(cond)) {                                                                \
            check_failed++;                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);  \
        }                                                                             \
    } while (0)

#define CHECK_DONE()                                                                  \
    (printf("%s: %d checks, %d failed\n", __FILE__, check_total, check_failed),       \
     check_failed ? 1 : 0)

#endif
