/* lookup: the cache in front of the origin, for one worker. For each quote
 * request it reads Redis once, answers hits, and turns misses into exactly
 * one origin load per key: in process through the flight table, across
 * instances through the Redis lock and the "loaded" announcements.
 *
 * Ownership: a request handed to lookup_quote is owned by this module until
 * its callback fires, exactly once and never before lookup_quote returns,
 * or until the caller detaches it with lookup_cancel (then the callback
 * never fires). A load belongs to the flight table, never to the request
 * that started it: a request that leaves only drops out of the flight, and
 * the load still completes, fills the cache and answers the others. */
#ifndef QUOTECACHE_LOOKUP_H
#define QUOTECACHE_LOOKUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quotecache/catalog.h"
#include "quotecache/config.h"
#include "quotecache/envelope.h"
#include "quotecache/metrics.h"
#include "quotecache/pgpool.h"
#include "quotecache/rcache.h"
#include "quotecache/request.h"
#include "quotecache/scope.h"
#include "quotecache/tax.h"

struct event_base;

typedef struct lookup lookup;

/* What to answer; pointers are valid only during the callback. */
typedef struct lookup_answer {
    int status;
    const char *body; /* JSON: the quote, or an error document */
    size_t len;
    const char *etag; /* for 200s, without quotes; NULL otherwise */
    enum metrics_xcache xcache;
    int retry_after_s;    /* > 0: send Retry-After */
    int64_t stored_at_ms; /* wall clock of the served copy's store; 0: not a copy */
    /* An in-process hit: the entry, with its ready-to-send parts (valid
     * until the caller returns; hot_value_ref keeps its bytes); else NULL. */
    const struct hot_entry *hot;
} lookup_answer;

typedef void lookup_cb(void *arg, const lookup_answer *a);

/* One request in lookup's hands; opaque. */
typedef struct lookup_req lookup_req;

/* rc may be NULL (--redis none). */
lookup *lookup_new(struct event_base *base, const qc_config *cfg, pgpool *pool, tax_client *tax,
                   catalog *cat, rcache *rc);
/* Shutdown, in this order: lookup_close (from now on every callback that
 * reaches a load or a request answers 503 instead of going on), then free
 * the rcache, the pool and the tax client (their shutdown answers into
 * loads that still exist), then lookup_free. */
void lookup_close(lookup *lk);
void lookup_free(lookup *lk);

/* r is validated and normalized. no_cache: skip the cached copy (the fresh
 * result is still stored). The callback always fires later. The handle is
 * valid until the callback fires or lookup_cancel. */
lookup_req *lookup_quote(lookup *lk, const quote_req *r, bool no_cache, lookup_cb *cb, void *arg);
/* The caller has gone (its client closed the connection): the callback will
 * never fire and q is invalid from now on. A waiter leaves its flight at
 * once (it no longer counts against --max-waiters); a request whose Redis
 * read is in flight is released when that read answers, after starting the
 * load a miss calls for (the cache is still filled). */
void lookup_cancel(lookup_req *q);

/* The in-process tier: when it holds a current copy for r at now_ms (the
 * wall clock in ms, read now: not the loop's cached time, which lags a
 * step of the wall clock by up to 5 s), fills *a (valid
 * until the next call into lookup) and returns true, answering at once; else
 * false, and the caller goes on with lookup_quote. Not for no-cache. */
bool lookup_quote_hot(lookup *lk, const quote_req *r, int64_t now_ms, lookup_answer *a);

/* Invalidation: loads in flight for the product (or all) will not store or
 * serve what they read before now, and in-process copies are dropped. */
void lookup_invalidate_product(lookup *lk, int64_t product_id);
void lookup_invalidate_all(lookup *lk);
/* Drops the quotes in one scope (scope.h) here: the in-process copies, and
 * loads in flight reload instead of storing. */
void lookup_invalidate_scope(lookup *lk, const scope *s);
/* While the change feed is down (trust_ms > 0) no copy is fresh past that
 * age: older ones are refreshed (served STALE meanwhile, within the usual
 * horizon). 0 restores the TTLs. */
void lookup_set_trust(lookup *lk, int64_t trust_ms);

/* Redis connection lost: stop waiting on other instances' loads. */
void lookup_redis_down(lookup *lk);
/* Redis is usable again: locks that loads could not release are released. */
void lookup_redis_up(lookup *lk);

/* Requests currently owned (waiting on Redis or on a load). */
size_t lookup_pending(const lookup *lk);

#endif
