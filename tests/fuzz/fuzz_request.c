/* Fuzz target: request_parse_quote, on what follows "/quote/" in the URI.
 * The input is split at its first '?' into the id segment and the query,
 * as server.c does. Oracles: an accepted request is in canonical form and
 * parses back to itself from its canonical spelling; a refused one is a
 * 400 with a known code and a printable message. */
#include "fuzz.h"

#include <stdbool.h>

#include "quotecache/request.h"

static bool letters(const char *s, size_t min, size_t max, bool upper)
{
    size_t n = strlen(s);

    if (n < min || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char lo = upper ? 'A' : 'a', hi = upper ? 'Z' : 'z';
        if (s[i] < lo || s[i] > hi)
            return false;
    }
    return true;
}

static void check_error(const qc_error *err)
{
    static const char *const codes[] = {"bad_request", "bad_product_id", "unknown_parameter",
                                        "duplicate_parameter", "missing_parameter"};
    bool known = false;

    FUZZ_CHECK(err->status == 400 && err->code != NULL);
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
        known = known || strcmp(err->code, codes[i]) == 0;
    FUZZ_CHECK(known);
    size_t n = strnlen(err->message, sizeof(err->message));
    FUZZ_CHECK(n > 0 && n < sizeof(err->message));
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(err->message[i] >= 0x20 && err->message[i] <= 0x7e);
}

static void check_accepted(const quote_req *r)
{
    char canon[128], seg[32], query[96];
    quote_req again;
    qc_error err;

    FUZZ_CHECK(r->product_id > 0);
    FUZZ_CHECK(letters(r->region, 1, REQUEST_NAME_MAX, true));
    FUZZ_CHECK(letters(r->tier, 1, REQUEST_NAME_MAX, false));
    FUZZ_CHECK(letters(r->currency, 3, 3, true));
    char want[128];
    int n = snprintf(want, sizeof(want), "%lld|%s|%s|%s", (long long)r->product_id, r->region,
                     r->tier, r->currency);
    FUZZ_CHECK(request_canonical(r, canon, sizeof(canon)) == n && strcmp(canon, want) == 0);
    snprintf(seg, sizeof(seg), "%lld", (long long)r->product_id);
    snprintf(query, sizeof(query), "tier=%s&currency=%s&region=%s", r->tier, r->currency,
             r->region);
    FUZZ_CHECK(request_parse_quote(seg, query, &again, &err) == 0);
    FUZZ_CHECK(again.product_id == r->product_id && strcmp(again.region, r->region) == 0 &&
               strcmp(again.tier, r->tier) == 0 && strcmp(again.currency, r->currency) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = fuzz_cstr(data, size);
    char *q = strchr(in, '?');
    quote_req r;
    qc_error err;

    if (q)
        *q++ = '\0';
    if (request_parse_quote(in, q, &r, &err) == 0)
        check_accepted(&r);
    else
        check_error(&err);
    free(in);
    return 0;
}
