/* upstream: the pass-through to the application behind quotecache
 * (--upstream). Owns a bounded pool of keep-alive HTTP/1.1 connections
 * to it (a client of our own on non-blocking sockets, the answers read by
 * upresp) and every forwarded request in flight (an op).
 *
 * Contract: upstream_forward never calls its callback before returning;
 * the callback fires exactly once, later, from the loop, unless the owner
 * calls upstream_cancel first (then never). */
#ifndef QUOTECACHE_UPSTREAM_H
#define QUOTECACHE_UPSTREAM_H

#include <stdbool.h>
#include <stddef.h>

#include "quotecache/error.h"

struct event_base;
struct evbuffer;
struct evkeyvalq;
typedef struct http_req http_req;

typedef struct upstream upstream;
typedef struct upstream_op upstream_op;

typedef struct upstream_answer {
    const qc_error *err;       /* non-NULL: no answer (502, 503, 504); the rest is empty */
    int status;                /* the upstream's status */
    struct evkeyvalq *headers; /* its end-to-end fields, plus our Via; the callee may move them */
    struct evbuffer *body;     /* its body (none for HEAD); the callee may drain it */
    double seconds;            /* from sending to the answer */
    bool unreadable;           /* with err: an answer came, not one we can read (its framing, a
                                * transfer coding other than chunked), rather than none or one
                                * cut short by the close */
} upstream_answer;

typedef void upstream_cb(void *arg, const upstream_answer *a);

/* url: http://HOST[:PORT][/PREFIX], resolved once, here. name (static)
 * starts its log lines. timeout_ms bounds each request from send to the
 * whole answer; max_body bounds answer bodies (past it: 502); max_conns
 * bounds connections in use (past it: 503). Returns NULL with one line in
 * err when the URL is not usable. */
upstream *upstream_new(struct event_base *base, const char *name, const char *url, int timeout_ms,
                       size_t max_body, int max_conns, char *err, size_t errlen);

/* Sends a copy of the client's request req (method, target with the
 * prefix in front, end-to-end headers plus forwarding fields, the body
 * re-framed with a Content-Length) to the upstream. Returns the op, which
 * the caller may cancel until cb fires. req's body is drained into the op;
 * req itself must stay valid until cb fires or upstream_cancel (a retry
 * reads its headers again), as a request does until it is answered. */
upstream_op *upstream_forward(upstream *u, http_req *req, upstream_cb *cb, void *arg);

/* A GET of target (origin form, the prefix goes in front) with a copy of
 * headers (the client's fields, filtered as upstream_forward filters
 * them), for a fetch that outlives the client it was made for (a shared
 * route's load: the first client may leave, the waiters stay). peer and
 * request_id name that first client in the forwarding fields. */
upstream_op *upstream_fetch(upstream *u, const char *target, const struct evkeyvalq *headers,
                            const char *peer, const char *request_id, upstream_cb *cb, void *arg);

/* A GET of target (origin form, the prefix goes in front) of our own, as
 * a client rather than a proxy: Host and nothing else (the tax service). */
upstream_op *upstream_get(upstream *u, const char *target, upstream_cb *cb, void *arg);

/* The owner is gone (its client closed): cb will not fire. A request still
 * on the wire is aborted (its connection closed, so the upstream sees it
 * too); the op frees itself from the loop. */
void upstream_cancel(upstream_op *op);

/* Answers every op still owned with 503 shutting_down, then frees all. */
void upstream_free(upstream *u);

/* Parses http://HOST[:PORT][/PREFIX] (port 80 by default; the prefix
 * without a trailing slash). Returns 0 or -1. */
int upstream_parse_url(const char *url, char *host, size_t hostlen, int *port, char *prefix,
                       size_t prefixlen);

#endif
