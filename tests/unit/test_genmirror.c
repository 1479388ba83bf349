/* Unit tests for genmirror: values only go up, a lower or a missing
 * counter is a regression (and the copy keeps its value), many names. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "quotecache/genmirror.h"

static bool obs(genmirror *m, const char *name, uint64_t v)
{
    return genmirror_observe(m, name, strlen(name), v);
}

static void test_monotonic(void)
{
    genmirror *m = genmirror_new();
    CHECK(genmirror_get(m, "qc:v1:gen") == 0); /* absent reads as 0 */
    genmirror_begin(m);
    CHECK(!obs(m, "qc:v1:gen", 5));
    CHECK(!obs(m, "qc:v1:fx:BRL:gen", 2));
    CHECK(!genmirror_end(m));
    CHECK(genmirror_get(m, "qc:v1:gen") == 5);
    CHECK(genmirror_get(m, "qc:v1:fx:BRL:gen") == 2);

    genmirror_begin(m); /* a failover lost an increment of the global one */
    CHECK(obs(m, "qc:v1:gen", 4));
    CHECK(!obs(m, "qc:v1:fx:BRL:gen", 3));
    CHECK(!genmirror_end(m));
    CHECK(genmirror_get(m, "qc:v1:gen") == 5); /* kept */
    CHECK(genmirror_get(m, "qc:v1:fx:BRL:gen") == 3);

    genmirror_begin(m); /* the hash lost a counter altogether */
    CHECK(!obs(m, "qc:v1:gen", 6));
    CHECK(genmirror_end(m));
    CHECK(genmirror_get(m, "qc:v1:fx:BRL:gen") == 3);

    genmirror_raise(m, "qc:v1:gen", 9);
    genmirror_raise(m, "qc:v1:gen", 7); /* a late, older answer */
    CHECK(genmirror_get(m, "qc:v1:gen") == 9);
    genmirror_free(m);
}

static void test_many_names(void)
{
    genmirror *m = genmirror_new();
    char name[32];
    genmirror_begin(m);
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "qc:v1:tier:t%d:gen", i);
        CHECK(!genmirror_observe(m, name, strlen(name), (uint64_t)i + 1));
    }
    CHECK(!genmirror_end(m));
    CHECK(genmirror_count(m) == 1000);
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "qc:v1:tier:t%d:gen", i);
        CHECK(genmirror_get(m, name) == (uint64_t)i + 1);
    }
    CHECK(genmirror_get(m, "qc:v1:tier:t1") == 0); /* a prefix is another name */
    uint64_t sum = 0;
    for (size_t i = 0; i < genmirror_count(m); i++) {
        const char *n;
        uint64_t v;
        genmirror_at(m, i, &n, &v);
        sum += v;
    }
    CHECK(sum == 1000 * 1001 / 2);
    genmirror_free(m);
}

int main(void)
{
    test_monotonic();
    test_many_names();
    return CHECK_DONE();
}
