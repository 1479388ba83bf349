/* shared: the `shared` routes of the pass-through: answers cached in
 * Redis for everyone, with the machinery of quotes: one upstream fetch
 * per key in process (flight.h) and across instances (the Redis lock and
 * the store announcements, rcache.h), stores fenced by the resource's
 * generation counter (sharedkey.h), STALE answers while the upstream
 * fails, within the route's horizon.
 *
 * Ownership: a request handed to shared_get is this module's until its
 * callback fires (exactly once, never before shared_get returns) or
 * shared_cancel. A fetch belongs to its flight, never to the request that
 * started it: that request may leave, the fetch still stores and answers
 * the others (it sends its own copy of the first request's fields). */
#ifndef QUOTECACHE_SHARED_H
#define QUOTECACHE_SHARED_H

#include <stdbool.h>

#include "quotecache/proxy.h"
#include "quotecache/rcache.h"
#include "quotecache/routes.h"
#include "quotecache/upstream.h"

struct event_base;
typedef struct http_req http_req;

typedef struct shared shared;
typedef struct shared_req shared_req;

/* rc may be NULL (--redis none): fetches are then coalesced in process
 * only and nothing is stored. lock_ttl_ms: the cross-instance lock's
 * life (raised to cover the upstream's deadline). */
shared *shared_new(struct event_base *base, upstream *up, rcache *rc, const char *version,
                   int lock_ttl_ms, int upstream_timeout_ms);
/* Shutdown: before the rcache is freed. From now on every callback
 * answers 503 and nothing is sent to Redis. */
void shared_close(shared *sh);
/* Answers what is left 503 and frees. */
void shared_free(shared *sh);

/* The channel of store announcements (qc:<version>:routes), which the
 * caller subscribes to and hands on with shared_on_message (msg NULL: the
 * subscription is back, announcements may have been lost). */
const char *shared_channel(const shared *sh);
void shared_on_message(shared *sh, const char *msg, size_t len);

/* A GET or HEAD of path?query on shared route r. Returns NULL when the
 * request is not cacheable there (a query parameter the route neither
 * names nor ignores, a key too long, no-store): the caller forwards it. */
shared_req *shared_get(shared *sh, const route *r, http_req *req, const char *path, proxy_cb *cb,
                       void *arg);
/* The client left: cb will not fire. */
void shared_cancel(shared_req *q);

/* Answers a GET or HEAD on shared route r at once from this worker's
 * in-process tier (sharedhot.h: what it read from Redis, for SHOT_MS at
 * most, while Redis and the subscriber are up; not on a Redis Cluster,
 * whose PUBLISH answers before other nodes' subscribers have the write's
 * announcement): returns true with *out filled (release it after
 * sending). Else false: shared_get. */
bool shared_try_hot(shared *sh, const route *r, http_req *req, const char *path, proxy_reply *out);
/* A write to wpath was announced (by any worker of any instance): the
 * in-process copies of the shared resources it touches go. */
void shared_on_write(shared *sh, const routes *rt, const char *wpath);
/* Every in-process copy goes (a purge of everything, Redis lost or back). */
void shared_drop_copies(shared *sh);

/* A write to wpath was answered 2xx or 3xx: bumps the counter of every shared
 * resource it touches (sharedkey.h); done runs once all are acknowledged
 * (or failed: then ok is false; never before this returns). Returns the
 * number of bumps sent; 0: done will not run. */
typedef void shared_done_cb(void *arg, bool ok);
int shared_invalidate(shared *sh, const routes *rt, const char *wpath, shared_done_cb *done,
                      void *arg);

#endif
