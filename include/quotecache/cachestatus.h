/* cachestatus: the RFC 9211 Cache-Status and RFC 9111 Age values of a quote
 * answer, from its X-Cache result and when the served copy was stored.
 * Pure: no I/O, the caller passes the clock. */
#ifndef QUOTECACHE_CACHESTATUS_H
#define QUOTECACHE_CACHESTATUS_H

#include <stddef.h>
#include <stdint.h>

#include "quotecache/metrics.h"

/* Writes the Cache-Status value into buf (NUL-terminated, truncated to
 * len): "quotecache; hit; ttl=N" (N: seconds of freshness left),
 * "quotecache; fwd=uri-miss; stored", "quotecache; fwd=stale; ttl=-N",
 * "quotecache; fwd=uri-miss; collapsed", "quotecache; fwd=bypass", or
 * "quotecache; detail=error" for an answer the cache had no part in.
 * stored_at_ms: wall clock of the served copy's store, 0 when unknown (then
 * no ttl is given); ttl_s: --ttl. */
void cache_status_render(char *buf, size_t len, enum metrics_xcache x, int64_t stored_at_ms,
                         int ttl_s, int64_t now_ms);

/* Seconds since the copy was stored (the Age header), or -1 when the answer
 * is not a copy from the cache or its store time is unknown. */
int64_t cache_status_age(enum metrics_xcache x, int64_t stored_at_ms, int64_t now_ms);

#endif
