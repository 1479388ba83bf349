/* fresh: the freshness rules of the cache, as pure functions of an entry's
 * envelope, the generations and the times they are given. No clock, no I/O:
 * the caller passes "now" and the counters it read, so every decision can be
 * unit-tested and is judged at the moment an answer is served, not when a
 * copy was fetched.
 *
 * Generations: an entry records the Redis counters (global, product) it was
 * loaded under; it is superseded when either counter moved. Copies held in
 * process are also stamped with the instance's local invalidation counter
 * when they were read; a moved local counter supersedes them too (a write or
 * a purge was seen here, even if Redis has not said so yet). */
#ifndef QUOTECACHE_FRESH_H
#define QUOTECACHE_FRESH_H

#include <stdbool.h>
#include <stdint.h>

#include "quotecache/envelope.h"

typedef struct fresh_policy {
    int64_t ttl_ms;     /* a 200 is fresh this long after it was stored */
    int64_t neg_ttl_ms; /* a 404 is fresh this long */
    int64_t stale_ms;   /* past its TTL a 200 may be served STALE this long */
    int64_t trust_ms;   /* > 0: no copy is fresh past this age (the change feed
                           is down); the STALE horizon stays as it was */
} fresh_policy;

/* The generation counters a copy is judged against. */
typedef struct fresh_gens {
    uint64_t global;
    uint64_t product; /* the sum of the scope counters (scope.h), as rcache_value's */
} fresh_gens;

/* When e stops being fresh (wall clock ms): its TTL, or trust_ms when set
 * and shorter. */
int64_t fresh_until_ms(const fresh_policy *p, const envelope *e);
/* Whether a copy that may be served STALE is answered at once while one
 * refresh runs (stale-while-revalidate), or only if that refresh fails:
 * while the change feed is down (trust_ms), a copy past its trusted age may
 * be superseded by a write nobody heard of, so it waits for the refresh. */
bool fresh_stale_while_revalidate(const fresh_policy *p);
/* When e may no longer be served at all, not even STALE. 404s are never
 * served stale: their horizon is their TTL. */
int64_t fresh_horizon_ms(const fresh_policy *p, const envelope *e);

/* e was stored under the counters now in Redis and is inside its TTL. */
bool fresh_is_current(const fresh_policy *p, const envelope *e, fresh_gens now_gens,
                      int64_t now_ms);

/* e may be served STALE now: a 200 past its TTL (or fresh: a current copy
 * may always stand in for a stale one) but before its horizon, not
 * superseded in Redis (now_gens) and not superseded here (the local counter
 * read_local when the copy was read equals now_local). */
bool fresh_may_serve_stale(const fresh_policy *p, const envelope *e, fresh_gens now_gens,
                           uint64_t read_local, uint64_t now_local, int64_t now_ms);

/* Read your own write: a no-cache request that arrived at arrived (0: not a
 * no-cache request) must not be answered from a load that began at
 * load_began (same clock) or earlier: that load may have read the database
 * before the write the client is asking about (the same tick counts as
 * earlier: the clock cannot tell them apart). load_began 0 means no load
 * ran (an error answer): nothing to wait for. */
bool fresh_needs_later_load(int64_t arrived, int64_t load_began);

/* When the load that produced e began (wall clock ms). */
int64_t fresh_load_began_ms(const envelope *e);

#endif
