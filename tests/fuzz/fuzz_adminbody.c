/* Fuzz target: adminbody_parse_invalidate, on the body of POST
 * /admin/invalidate (whoever holds the admin token, or anyone on loopback
 * without one). Oracles: the answer is -1, 0 or an id 1 .. 2^53 - 1; an
 * accepted body is one JSON object with nothing but whitespace around it
 * (first and last other bytes are the braces: an independent check of the
 * trailing-text rule); an accepted id re-reads the same from its canonical
 * spelling, and "all" needs the literal true. The body ends at a PROT_NONE
 * page, so an over-read faults even inside cJSON (not instrumented). */
#include "fuzz.h"

#include <stdbool.h>

#include "quotecache/adminbody.h"

static bool ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* The first and the last non-whitespace bytes are '{' and '}'. */
static bool braced(const char *s, size_t n)
{
    size_t a = 0, b = n;
    while (a < n && ws(s[a]))
        a++;
    while (b > a && ws(s[b - 1]))
        b--;
    return b - a >= 2 && s[a] == '{' && s[b - 1] == '}';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = fuzz_guarded(data, size);
    long long out = adminbody_parse_invalidate(s, size);

    FUZZ_CHECK(out >= -1 && out <= 9007199254740991LL);
    if (out >= 0)
        FUZZ_CHECK(size <= ADMINBODY_MAX && braced(s, size));
    if (out == 0)
        FUZZ_CHECK(memmem(s, size, "true", 4) != NULL && memmem(s, size, "\"all\"", 5) != NULL);
    if (out > 0) {
        char again[64];
        int n = snprintf(again, sizeof(again), "{\"product_id\":%lld}", out);
        FUZZ_CHECK(adminbody_parse_invalidate(again, (size_t)n) == out);
    }
    fuzz_guarded_free(s, size);
    return 0;
}
