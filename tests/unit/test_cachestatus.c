/* Unit tests for cachestatus: the RFC 9211 value for each X-Cache result,
 * ttl left (negative when stale) and Age when the store time is known. */
#include <string.h>

#include "check.h"
#include "quotecache/cachestatus.h"

static int is(enum metrics_xcache x, int64_t stored, int ttl, int64_t now, const char *want)
{
    char buf[64];
    cache_status_render(buf, sizeof(buf), x, stored, ttl, now);
    if (strcmp(buf, want) != 0) {
        fprintf(stderr, "got '%s', want '%s'\n", buf, want);
        return 0;
    }
    return 1;
}

int main(void)
{
    const int64_t t0 = 1700000000000;
    CHECK(is(X_HIT, t0, 300, t0 + 12500, "quotecache; hit; ttl=288"));
    CHECK(is(X_HIT, 0, 300, t0, "quotecache; hit"));
    CHECK(is(X_STALE, t0, 300, t0 + 305000, "quotecache; fwd=stale; ttl=-5"));
    CHECK(is(X_STALE, 0, 300, t0, "quotecache; fwd=stale"));
    CHECK(is(X_MISS, t0, 300, t0, "quotecache; fwd=uri-miss; stored"));
    CHECK(is(X_COALESCED, 0, 300, t0, "quotecache; fwd=uri-miss; collapsed"));
    CHECK(is(X_BYPASS, 0, 300, t0, "quotecache; fwd=bypass"));
    CHECK(is(X_NONE, 0, 300, t0, "quotecache; detail=error"));
    CHECK(cache_status_age(X_HIT, t0, t0 + 12999) == 12);
    CHECK(cache_status_age(X_STALE, t0, t0 + 1000) == 1);
    CHECK(cache_status_age(X_HIT, t0, t0 - 5000) == 0); /* a clock step back */
    CHECK(cache_status_age(X_HIT, 0, t0) == -1);
    CHECK(cache_status_age(X_MISS, t0, t0 + 1000) == -1);
    return CHECK_DONE();
}
