/* Unit tests of the quote document: exact 64-bit money, and a total that
 * does not fit in 64 bits refused (never rendered as a wrapped number). */
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

int main(void)
{
    test_total_exact_near_the_top();
    test_total_overflow_is_refused();
    test_small_quote();
    return CHECK_DONE();
}
