/* Unit tests of quote: the quote document (exact 64-bit money, and a total
 * that does not fit in 64 bits refused, never rendered as a wrapped number)
 * and quote_parse_id_array, PostgreSQL bigint[] text. The id-array
 * spellings refused below were accepted before (found by
 * tests/fuzz/fuzz_id_array: strtoll skips spaces and takes '+', and text
 * after the first '}' was ignored). Output arrays are exactly the bound, so
 * ASan sees overflows. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quotecache/quote.h"

static quote make(int64_t unit, int64_t tax)
{
    quote q;
    memset(&q, 0, sizeof(q));
    q.req.product_id = 42;
    strcpy(q.req.region, "US");
    strcpy(q.req.tier, "standard");
    strcpy(q.req.currency, "USD");
    q.unit_price_cents = unit;
    q.tax_cents = tax;
    return q;
}

static void test_total_exact_near_the_top(void)
{
    quote q = make(INT64_MAX - 10, 10);
    size_t len;
    char *body = quote_render(&q, &len);
    CHECK(body != NULL);
    if (body != NULL) {
        CHECK(strstr(body, "\"total_cents\":9223372036854775807") != NULL);
        CHECK(strstr(body, "\"unit_price_cents\":9223372036854775797") != NULL);
        free(body);
    }
}

static void test_total_overflow_is_refused(void)
{
    size_t len = 123;
    quote q = make(INT64_MAX - 10, 11);
    CHECK(quote_render(&q, &len) == NULL);
    q = make(9223372036854775000LL, 9007199254740992LL); /* 2^53: the largest tax we accept */
    CHECK(quote_render(&q, &len) == NULL);
    q = make(INT64_MAX, INT64_MAX);
    CHECK(quote_render(&q, &len) == NULL);
}

static void test_small_quote(void)
{
    quote q = make(1999, 160);
    size_t len;
    char *body = quote_render(&q, &len);
    CHECK(body != NULL && len == strlen(body));
    if (body != NULL) {
        CHECK(strstr(body, "\"total_cents\":2159") != NULL);
        free(body);
    }
}

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
    test_total_exact_near_the_top();
    test_total_overflow_is_refused();
    test_small_quote();
    test_good();
    test_bad();
    test_bound();
    return CHECK_DONE();
}
