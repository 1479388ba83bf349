/* proxy: what happens to a request quotecache does not own: its route's
 * policy (routes.h), the in-process cache of `local` routes
 * (localcache.h, under the RFC 9111 rules of httpcache.h), and the
 * upstream (upstream.h). It builds every header of the answer (the
 * upstream's, Age, X-Cache, Cache-Status); the server only sends it.
 *
 * A hit in process (a local copy, or a shared route's in-process copy of
 * what Redis holds) is answered at once (proxy_try_hit); anything else is
 * an op (proxy_forward) whose callback fires once, later, unless
 * cancelled. */
#ifndef QUOTECACHE_PROXY_H
#define QUOTECACHE_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/queue.h>

#include <event2/keyvalq_struct.h>

#include "quotecache/error.h"
#include "quotecache/metrics.h"
#include "quotecache/rcache.h"
#include "quotecache/routes.h"
#include "quotecache/upstream.h"

typedef struct http_req http_req;

typedef struct proxy proxy;
typedef struct proxy_op proxy_op;

typedef struct proxy_reply {
    const qc_error *err; /* non-NULL: answer this JSON error (headers still apply) */
    int status;
    struct evkeyvalq headers; /* every field to send */
    struct evbuffer *body;    /* NULL: none (HEAD, 304) */
    const char *route;        /* the route's name, "unlisted" when none matched */
    enum metrics_xcache xcache;
    double upstream_seconds; /* -1 for a hit (no upstream call) */
    struct evbuffer *owned;  /* internal */
} proxy_reply;

typedef void proxy_cb(void *arg, proxy_reply *r);

/* Takes up and rt (NULL: every route bypass); local_bytes bounds the
 * local cache. */
proxy *proxy_new(upstream *up, routes *rt, size_t local_bytes);
void proxy_free(proxy *p);
/* Gives the proxy its worker's loop and Redis (rc NULL: --redis none) for
 * shared routes and cross-worker invalidation; call once, after
 * proxy_new. */
struct event_base;
void proxy_attach(proxy *p, struct event_base *base, rcache *rc, const char *version,
                  int lock_ttl_ms, int upstream_timeout_ms);
/* Shutdown, before the rcache is freed: nothing more is sent to Redis. */
void proxy_close(proxy *p);
/* An admin purge of everything was made here: every worker of every
 * instance drops its in-process copies (local and shared). Returns true
 * when the announcement went to Redis: done fires once it is answered;
 * false: this worker's copies alone were dropped, done never fires. */
bool proxy_purged(proxy *p, rcache_done_cb *done, void *arg);
/* Redis went down or came back (rcache_state_cb): the shared routes'
 * in-process copies go. */
void proxy_redis_state(proxy *p, bool up);

/* Answers req (path: its path, no query) in process: from the local cache
 * when its route is local and a fresh copy of this identity is there, or
 * from a shared route's in-process tier (shared.h). Returns true with
 * *out filled (release it after sending), else false. */
bool proxy_try_hit(proxy *p, http_req *req, const char *path, proxy_reply *out);
void proxy_reply_release(proxy_reply *r);

/* Forwards req; cb gets the reply (valid during the call only). req must
 * stay valid until cb fires or proxy_cancel (upstream.h). */
proxy_op *proxy_forward(proxy *p, http_req *req, const char *path, proxy_cb *cb, void *arg);
/* The client left: cb will not fire; the upstream request is aborted. */
void proxy_cancel(proxy_op *op);

/* Builds the local cache key (method GET, target with sorted query,
 * route name, SHA-256 of the identity and the Host, host NULL when the
 * request has none) into buf. Returns 0, or -1 when the key does not fit
 * in len (then nothing may be cached: a cut key would lose the identity).
 * Pure; for tests. */
int proxy_local_key(const route *r, const char *target, const char *identity, const char *host,
                    char *buf, size_t len);

#endif
