/* cachestatus: RFC 9211 Cache-Status and RFC 9111 Age for quote answers.
 * Only copies served from a cache tier (HIT, STALE) have an age and a
 * freshness; a STALE copy's ttl is negative, as RFC 9211 section 2.5
 * allows. */
#include "quotecache/cachestatus.h"

#include <stdio.h>

#include "quotecache/strbuf.h"

int64_t cache_status_age(enum metrics_xcache x, int64_t stored_at_ms, int64_t now_ms)
{
    if ((x != X_HIT && x != X_STALE) || stored_at_ms <= 0)
        return -1;
    return now_ms > stored_at_ms ? (now_ms - stored_at_ms) / 1000 : 0;
}

void cache_status_render(char *buf, size_t len, enum metrics_xcache x, int64_t stored_at_ms,
                         int ttl_s, int64_t now_ms)
{
    int64_t age = cache_status_age(x, stored_at_ms, now_ms);
    long long left = (long long)ttl_s - (long long)age;
    switch (x) {
    case X_HIT: {
        /* Every hit: by hand rather than snprintf, a measurable share of it. */
        strbuf b = strbuf_on(buf, len);
        strbuf_str(&b, "quotecache; hit");
        if (age >= 0) {
            strbuf_str(&b, "; ttl=");
            strbuf_i64(&b, left);
        }
        return;
    }
    case X_STALE:
        if (age >= 0)
            snprintf(buf, len, "quotecache; fwd=stale; ttl=%lld", left);
        else
            snprintf(buf, len, "quotecache; fwd=stale");
        return;
    case X_MISS:
        snprintf(buf, len, "quotecache; fwd=uri-miss; stored");
        return;
    case X_COALESCED:
        snprintf(buf, len, "quotecache; fwd=uri-miss; collapsed");
        return;
    case X_BYPASS:
        snprintf(buf, len, "quotecache; fwd=bypass");
        return;
    default:
        snprintf(buf, len, "quotecache; detail=error");
        return;
    }
}
