/* Unit tests for quote_parse_id_array: PostgreSQL bigint[] text. The
 * refused spellings were accepted before (found by tests/fuzz/fuzz_id_array:
 * strtoll skips spaces and takes '+', and text after the first '}' was
 * ignored). The output array is exactly the bound, so ASan sees overflows. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quotecache/quote.h"

static int parse(const char *s, int64_t *out, size_t max)
{
    return quote_parse_id_array(s, out, max);
}

static void test_good(void)
{
    int64_t *v = malloc(3 * sizeof(*v));

    CHECK(parse("{}", v, 0) == 0);
    CHECK(parse("{}", v, 3) == 0);
    CHECK(parse("{7}", v, 3) == 1 && v[0] == 7);
    CHECK(parse("{1,5,9}", v, 3) == 3 && v[0] == 1 && v[1] == 5 && v[2] == 9);
    CHECK(parse("{-9223372036854775808,9223372036854775807}", v, 3) == 2 && v[0] == INT64_MIN &&
          v[1] == INT64_MAX);
    free(v);
}

static void test_bad(void)
{
    static const char *const bad[] = {
        "",
        "{",
        "}",
        "{,}",
        "{1,}",
        "{,1}",
        "{1,,2}",
        "{x}",
        "{1 }",
        "{1;2}",
        "[1]",
        "{9223372036854775808}",
        "{-}",
        "{- 1}",
        /* accepted before the fuzzer found them */
        "{1,          9}",
        "{ 1}",
        "{+1}",
        "{1,\t2}",
        "{1}2}",
        "{1},}",
        "{}}",
        "{1}}",
    };
    int64_t *v = malloc(4 * sizeof(*v));

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int rc = parse(bad[i], v, 4);
        if (rc != -1)
            fprintf(stderr, "accepted: '%s'\n", bad[i]);
        CHECK(rc == -1);
    }
    free(v);
}

static void test_bound(void)
{
    int64_t *v = malloc(2 * sizeof(*v));

    CHECK(parse("{1,2}", v, 2) == 2);
    CHECK(parse("{1,2,3}", v, 2) == -1); /* never writes v[2] */
    CHECK(parse("{1}", v, 0) == -1);
    free(v);
}

int main(void)
{
    test_good();
    test_bad();
    test_bound();
    return CHECK_DONE();
}
