/* server: owns the listeners of one worker (httpconn.h) and the
 * per-request context of every public request until it is answered. */
#include "quotecache/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netdb.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "quotecache/adminbody.h"
#include "quotecache/cachestatus.h"
#include "quotecache/hdrlist.h"
#include "quotecache/health.h"
#include "quotecache/httpconn.h"
#include "quotecache/hot.h"
#include "quotecache/httphdr.h"
#include "quotecache/listener.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"
#include "quotecache/proxyhdr.h"
#include "quotecache/quote.h"
#include "quotecache/request.h"
#include "quotecache/routes.h"
#include "quotecache/strbuf.h"

#define INM_MAX 256
#define SERVER_HEALTH_PUBLISH_MS 200 /* staleness of other workers' health in /healthz */
#define HEALTH_MAX_WORKERS 512       /* slots read per /healthz, at most */

/* A quote request that arrived before the first catalog load. */
typedef struct ready_wait {
    struct ready_wait *next, *prev;
    server *s;
    http_req *req;
    quote_req r;
    struct timespec deadline;
} ready_wait;

struct server {
    struct event_base *base;
    server_deps d;
    http_listener *pub, *admin;
    size_t inflight;
    ready_wait *waiting, *waiting_tail; /* FIFO: deadlines in order */
    size_t nwaiting;
    struct event *ready_timer;
    struct event *health_timer; /* publishes this worker's health for /healthz */
    bool draining;              /* stopped accepting: every answer closes its connection */
};

typedef struct req_ctx {
    server *s;
    http_req *req;
    struct timespec started;
    char inm[INM_MAX]; /* If-None-Match, "" when absent */
    lookup_req *lr;    /* until answered */
    proxy_op *px;      /* instead of lr: a request passed to the upstream */
} req_ctx;

/* ---- replies ---- */

static double seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* Every answer leaves through here, exactly once per request: the status,
 * the headers already set, Content-Type, and the body (copied; httpconn
 * adds Date and Content-Length, and sends a HEAD the same fields without
 * the body). 304 has neither body nor length. */
static void send_body(server *s, http_req *req, int status, const char *ctype, const char *body,
                      size_t len)
{
    (void)s;
    if (status != 304 && status != 204)
        hdrlist_add(req->out, "Content-Type", ctype);
    http_send_mem(req, status, body, len);
}

static void send_reply(server *s, http_req *req, int status, const char *ctype, const char *body,
                       size_t len)
{
    send_body(s, req, status, ctype, body, len);
}

static void send_json(server *s, http_req *req, int status, const char *body, size_t len)
{
    send_body(s, req, status, "application/json", body, len);
}

/* An error document, counted under route. */
static void send_error(server *s, http_req *req, enum metrics_route route, int status,
                       const char *code, const char *message)
{
    size_t len;
    char *body = quote_render_error(code, message, &len);
    send_json(s, req, status, body, len);
    free(body);
    metrics_request(route, status, X_NONE, 0);
}

/* ---- /quote ---- */

/* True when an If-None-Match list contains the tag (or is "*"). */
static bool etag_matches(const char *inm, const char *etag)
{
    return httphdr_etag_matches(inm, etag);
}

static int64_t wall_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

/* Replies to a quote request with a lookup answer (exactly once). now_ms:
 * the wall clock read now (Age and the ttl left are differences with the
 * copy's wall-clock store time: never the loop's cached time, which lags
 * a step of the wall clock by up to 5 s). */
static void reply_quote(server *s, http_req *req, const char *inm, const struct timespec *started,
                        int64_t now_ms, const lookup_answer *a)
{
    struct evkeyvalq *h = req->out;
    const char *x = metrics_xcache_name(a->xcache);
    if (x)
        hdrlist_add(h, "X-Cache", x);
    char cs[64];
    int ttl_s = a->status == 200 ? s->d.cfg->ttl_s : s->d.cfg->neg_ttl_s; /* 404s: --neg-ttl */
    cache_status_render(cs, sizeof(cs), a->xcache, a->stored_at_ms, ttl_s, now_ms);
    hdrlist_add(h, "Cache-Status", cs);
    int64_t age = cache_status_age(a->xcache, a->stored_at_ms, now_ms);
    if (age >= 0) {
        char agebuf[24];
        strbuf ab = strbuf_on(agebuf, sizeof(agebuf));
        strbuf_i64(&ab, age);
        hdrlist_add(h, "Age", agebuf);
    }
    int status = a->status;
    if (a->retry_after_s > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", a->retry_after_s);
        hdrlist_add(h, "Retry-After", ra);
    }
    if (a->etag != NULL) {
        char tag[ENVELOPE_ETAG_LEN + 3];
        if (a->hot == NULL)
            snprintf(tag, sizeof(tag), "\"%s\"", a->etag);
        hdrlist_add(h, "ETag", a->hot ? a->hot->etag_quoted : tag);
        hdrlist_add(h, "Cache-Control", "no-cache");
    }
    if (a->etag != NULL && inm != NULL && inm[0] && etag_matches(inm, a->etag))
        status = 304;
    send_body(s, req, status, "application/json", a->body, a->len);
    metrics_request(R_QUOTE, status, a->xcache, seconds_since(started));
}

static void on_answer(void *arg, const lookup_answer *a)
{
    req_ctx *c = arg;
    reply_quote(c->s, c->req, c->inm, &c->started, wall_now_ms(), a);
    c->s->inflight--;
    free(c);
}

/* The client left while lookup or the upstream had its request: the
 * request leaves its flight at once (the load goes on) and gets no answer.
 * httpconn reads a connection while its request is handled, so it sees the
 * close (or a half-close, which counts as gone, as in nginx) at once. */
static void on_client_gone(void *arg)
{
    req_ctx *c = arg;
    if (c->px != NULL)
        proxy_cancel(c->px);
    else
        lookup_cancel(c->lr);
    c->s->inflight--;
    free(c);
}

static bool header_has_token(const char *value, const char *token)
{
    return httphdr_has_token(value, token);
}

/* Checks what only the catalog knows. Returns true when it answered. */
static bool reject_unknown(server *s, http_req *req, const quote_req *r)
{
    const catalog *cat = s->d.cat;
    if (!catalog_has_region(cat, r->region)) {
        send_error(s, req, R_QUOTE, 400, "unknown_region", "parameter 'region': no such region");
        return true;
    }
    if (!catalog_has_tier(cat, r->tier)) {
        send_error(s, req, R_QUOTE, 400, "unknown_tier", "parameter 'tier': no such tier");
        return true;
    }
    if (!catalog_has_currency(cat, r->currency)) {
        send_error(s, req, R_QUOTE, 400, "unknown_currency",
                   "parameter 'currency': no such currency");
        return true;
    }
    return false;
}

/* A parsed quote request, once the catalog is loaded. */
static void quote_validated(server *s, http_req *req, const quote_req *r)
{
    if (reject_unknown(s, req, r))
        return;
    struct evkeyvalq *in = req->in;
    const char *cc = evhttp_find_header(in, "Cache-Control");
    const char *pragma = evhttp_find_header(in, "Pragma");
    bool no_cache = (cc && header_has_token(cc, "no-cache")) ||
                    (pragma && header_has_token(pragma, "no-cache"));
    const char *inm = evhttp_find_header(in, "If-None-Match");
    lookup_answer hot;
    /* The wall clock itself (a vDSO read), not the loop's cached copy:
     * libevent derives that from the monotonic clock and resyncs the
     * difference only every 5 s, so after a step of the wall clock the hot
     * tier would judge promotions and expiry on a time seconds off. */
    int64_t now_ms = wall_now_ms();
    if (!no_cache && lookup_quote_hot(s->d.lk, r, now_ms, &hot)) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        reply_quote(s, req, inm, &now, now_ms, &hot);
        return;
    }
    req_ctx *c = xcalloc(1, sizeof(*c));
    c->s = s;
    c->req = req;
    clock_gettime(CLOCK_MONOTONIC, &c->started);
    if (inm != NULL && strlen(inm) < INM_MAX)
        snprintf(c->inm, sizeof(c->inm), "%s", inm);
    s->inflight++;
    c->lr = lookup_quote(s->d.lk, r, no_cache, on_answer, c);
    http_req_on_gone(req, on_client_gone, c);
}

/* ---- readiness: quotes that arrive before the first catalog load ---- */

static void arm_ready_timer(server *s)
{
    if (s->waiting == NULL)
        return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    int64_t ms = (int64_t)(s->waiting->deadline.tv_sec - now.tv_sec) * 1000 +
                 (s->waiting->deadline.tv_nsec - now.tv_nsec) / 1000000;
    if (ms < 0)
        ms = 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(s->ready_timer, &tv);
}

static void unlink_waiting(server *s, ready_wait *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        s->waiting = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        s->waiting_tail = w->prev;
    http_req_on_gone(w->req, NULL, NULL);
    s->nwaiting--;
    s->inflight--;
}

static ready_wait *pop_waiting(server *s)
{
    ready_wait *w = s->waiting;
    unlink_waiting(s, w);
    return w;
}

/* A client that left while its quote waited for the catalog gives its
 * place back at once (the queue is bounded by --max-waiters), and its
 * connection is freed with the request, unanswered. */
static void on_waiting_client_gone(void *arg)
{
    ready_wait *w = arg;
    unlink_waiting(w->s, w);
    free(w);
}

static void refuse_waiting(server *s, ready_wait *w)
{
    send_error(s, w->req, R_QUOTE, 503, "catalog_unavailable", "pricing data is not loaded yet");
    free(w);
}

/* Holds a valid quote request until the catalog is ready, for at most
 * --pg-timeout (the deadline of the load that would make it ready). */
static void wait_for_catalog(server *s, http_req *req, const quote_req *r)
{
    if (s->nwaiting >= (size_t)s->d.cfg->max_waiters) {
        metrics_inc(M_WAITERS_REJECTED);
        send_error(s, req, R_QUOTE, 503, "catalog_unavailable", "pricing data is not loaded yet");
        return;
    }
    ready_wait *w = xcalloc(1, sizeof(*w));
    w->s = s;
    w->req = req;
    w->r = *r;
    clock_gettime(CLOCK_MONOTONIC, &w->deadline);
    int ms = s->d.cfg->pg_timeout_ms;
    w->deadline.tv_sec += ms / 1000;
    w->deadline.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (w->deadline.tv_nsec >= 1000000000L) {
        w->deadline.tv_sec++;
        w->deadline.tv_nsec -= 1000000000L;
    }
    w->prev = s->waiting_tail;
    if (s->waiting_tail)
        s->waiting_tail->next = w;
    else
        s->waiting = w;
    s->waiting_tail = w;
    http_req_on_gone(req, on_waiting_client_gone, w);
    s->nwaiting++;
    s->inflight++;
    if (s->waiting == w)
        arm_ready_timer(s);
}

static void on_ready_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    server *s = arg;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    while (s->waiting != NULL && (s->waiting->deadline.tv_sec < now.tv_sec ||
                                  (s->waiting->deadline.tv_sec == now.tv_sec &&
                                   s->waiting->deadline.tv_nsec <= now.tv_nsec)))
        refuse_waiting(s, pop_waiting(s));
    arm_ready_timer(s);
}

static void on_catalog_ready(void *arg)
{
    server *s = arg;
    evtimer_del(s->ready_timer);
    while (s->waiting != NULL) {
        ready_wait *w = pop_waiting(s);
        quote_validated(s, w->req, &w->r);
        free(w);
    }
}

static void handle_quote(server *s, http_req *req, const char *id_segment, const char *query)
{
    qc_error err;
    quote_req r;
    if (request_parse_quote(id_segment, query, &r, &err) < 0) {
        send_error(s, req, R_QUOTE, err.status, err.code, err.message);
        return;
    }
    if (!catalog_ready(s->d.cat))
        wait_for_catalog(s, req, &r);
    else
        quote_validated(s, req, &r);
}

/* ---- /healthz, /metrics ---- */

/* This worker's health, as the word it publishes in its metrics slot. */
static uint32_t health_bits(const server *s)
{
    const char *tax = tax_client_state(s->d.tax);
    uint32_t b = HEALTH_SET;
    b |= catalog_ready(s->d.cat) ? HEALTH_READY : 0;
    b |= s->d.rc == NULL ? 0 : rcache_is_up(s->d.rc) ? HEALTH_REDIS_UP : HEALTH_REDIS_DOWN;
    b |= pgpool_is_up(s->d.pool) ? HEALTH_PG_UP : 0;
    b |= strcmp(tax, "up") == 0 ? HEALTH_TAX_UP : strcmp(tax, "down") == 0 ? HEALTH_TAX_DOWN : 0;
    b |= invalidate_listening(s->d.inv) ? HEALTH_INV_UP : 0;
    return b;
}

static void on_health_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    metrics_state_publish(health_bits(arg));
}

/* The instance's health (health.h), whichever worker answers: every
 * accepting worker's word, ours fresh. */
static void handle_healthz(server *s, http_req *req)
{
    static uint32_t words[HEALTH_MAX_WORKERS];
    if (!s->draining)
        metrics_state_publish(health_bits(s));
    health_view v;
    health_combine(words, metrics_states(words, HEALTH_MAX_WORKERS), &v);
    char body[224];
    size_t n = health_render(body, sizeof(body), &v);
    int code = v.code;
    hdrlist_add(req->out, "Cache-Control", "no-store");
    send_json(s, req, code, body, n);
    metrics_request(R_HEALTHZ, code, X_NONE, 0);
}

static void handle_metrics(server *s, http_req *req)
{
    metrics_request(R_METRICS, 200, X_NONE, 0);
    size_t len;
    char *text = metrics_render(&len);
    send_reply(s, req, 200, "text/plain; version=0.0.4", text, len);
    free(text);
}

/* ---- pass-through (--upstream) ---- */

/* A proxied answer as proxy.c built it (every header set there, moved
 * into the answer, not copied), or our JSON 502/503/504 with its cache
 * fields. */
static void send_proxied(server *s, http_req *req, proxy_reply *r)
{
    proxyhdr_move_all(&r->headers, req->out);
    if (r->err != NULL) {
        metrics_proxy_request(r->route, r->err->status, r->xcache, r->upstream_seconds);
        send_error(s, req, R_OTHER, r->err->status, r->err->code, r->err->message);
        return;
    }
    metrics_proxy_request(r->route, r->status, r->xcache, r->upstream_seconds);
    http_send(req, r->status, r->body);
    metrics_request(R_OTHER, r->status, r->xcache,
                    r->upstream_seconds < 0 ? 0 : r->upstream_seconds);
}

static void on_proxied(void *arg, proxy_reply *r)
{
    req_ctx *c = arg;
    c->s->inflight--;
    send_proxied(c->s, c->req, r);
    free(c);
}

static void handle_proxied(server *s, http_req *req, const char *path)
{
    proxy_reply hit;
    if (proxy_try_hit(s->d.px, req, path, &hit)) {
        send_proxied(s, req, &hit);
        proxy_reply_release(&hit);
        return;
    }
    req_ctx *c = xcalloc(1, sizeof(*c));
    c->s = s;
    c->req = req;
    clock_gettime(CLOCK_MONOTONIC, &c->started);
    s->inflight++;
    c->px = proxy_forward(s->d.px, req, path, on_proxied, c);
    http_req_on_gone(req, on_client_gone, c);
}

/* ---- limits and routing ---- */

/* Whether what follows req on its connection is unknown: a body it
 * announces although its method has none (a HEAD, a TRACE, a method we do
 * not know), which another parser would read as the next request. */
static bool next_unknown(http_req *req)
{
    const char *why;
    int m = req->method;
    bool bodyless = m == EVHTTP_REQ_HEAD || m == EVHTTP_REQ_TRACE || m == REQPARSE_METHOD_UNKNOWN;
    return bodyless && proxyhdr_check_bodyless(req->in, &why) < 0;
}

/* Answers a request reqparse refused (reqparse.h: 414, 431, 413,
 * bad_field, bad_target, bad_framing...). Returns true when it did. The
 * connection closes after a fatal refusal, and after one whose request
 * announced a body its method has none of. */
static bool reject_refused(server *s, http_req *req, enum metrics_route route)
{
    if (req->err_status == 0)
        return false;
    if (req->err_close || next_unknown(req))
        hdrlist_add(req->out, "Connection", "close");
    send_error(s, req, route, req->err_status, req->err_code, req->err_message);
    return true;
}

static bool method_ok(server *s, http_req *req, const char *allow, enum evhttp_cmd_type want,
                      enum metrics_route route)
{
    int m = req->method;
    if (m == (int)want || (want == EVHTTP_REQ_GET && m == EVHTTP_REQ_HEAD))
        return true;
    hdrlist_add(req->out, "Allow", allow);
    send_error(s, req, route, 405, "method_not_allowed", "method not allowed on this route");
    return false;
}

/* The checks every listener runs before routing, past what reqparse
 * refuses, so that a request is read here as anything behind us would
 * read it. allow: the Allow of the listener's 405 to TRACE and CONNECT
 * (NULL: none to give). Returns true when it answered. */
static bool reject_unsafe(server *s, http_req *req, enum metrics_route route, const char *allow)
{
    const char *why;
    struct evkeyvalq *in = req->in;
    struct evkeyvalq *out = req->out;
    int m = req->method;
    const char *host;
    if ((m == EVHTTP_REQ_HEAD || m == EVHTTP_REQ_TRACE) && proxyhdr_check_bodyless(in, &why) < 0) {
        /* A body no upstream expects there: it might read it as the next
         * request. Refused, and the connection closed. */
        hdrlist_add(out, "Connection", "close");
        send_error(s, req, route, 400, "bad_framing", why);
        return true;
    }
    if (proxyhdr_count(in, "Host", &host) > 1) {
        /* RFC 9112 3.2: a 400. We key and set X-Forwarded-Host by the first;
         * the application may read the last. */
        send_error(s, req, route, 400, "bad_host", "more than one Host");
        return true;
    }
    if (m == EVHTTP_REQ_TRACE || m == EVHTTP_REQ_CONNECT) {
        /* Never answered nor forwarded: TRACE echoes credentials back to a
         * script (cross-site tracing), CONNECT would make us a tunnel. */
        if (allow != NULL)
            hdrlist_add(out, "Allow", allow);
        send_error(s, req, route, 405, "method_not_allowed", "method not allowed");
        return true;
    }
    /* An unknown method's body is read, but the answer closes (as it
     * always did: such a method is never forwarded). */
    if (m == REQPARSE_METHOD_UNKNOWN && next_unknown(req))
        hdrlist_add(out, "Connection", "close");
    return false;
}

static void route_public(server *s, http_req *req)
{
    if (reject_refused(s, req, R_OTHER) || reject_unsafe(s, req, R_OTHER, NULL))
        return;
    int m = req->method;
    char path[4096 + 1];
    const char *uri = req->target;
    /* Absolute form (RFC 7230 5.3.2): route on what follows the authority. */
    if (strncasecmp(uri, "http://", 7) == 0) {
        const char *slash = strchr(uri + 7, '/');
        uri = slash ? slash : "/";
    }
    const char *q = strchr(uri, '?');
    size_t plen = q ? (size_t)(q - uri) : strlen(uri);
    if (plen >= sizeof(path)) {
        send_error(s, req, R_OTHER, 414, "uri_too_long", "the request URI is too long");
        return;
    }
    memcpy(path, uri, plen);
    path[plen] = '\0';
    const char *query = q ? q + 1 : NULL;
    if (strncmp(path, "/quote/", 7) == 0 && strchr(path + 7, '/') == NULL) {
        if (method_ok(s, req, "GET, HEAD", EVHTTP_REQ_GET, R_QUOTE))
            handle_quote(s, req, path + 7, query);
    } else if (strcmp(path, "/healthz") == 0) {
        if (method_ok(s, req, "GET, HEAD", EVHTTP_REQ_GET, R_HEALTHZ))
            handle_healthz(s, req);
    } else if (strcmp(path, "/metrics") == 0) {
        if (method_ok(s, req, "GET, HEAD", EVHTTP_REQ_GET, R_METRICS))
            handle_metrics(s, req);
    } else if (m == REQPARSE_METHOD_UNKNOWN) {
        /* On no other route, and never to the upstream: a method we do not
         * know the meaning of (safe? idempotent?) is not ours to pass. */
        send_error(s, req, R_OTHER, 501, "not_implemented", "method not implemented");
    } else if (s->d.px != NULL && path[0] == '/' && strcmp(path, "/quote") != 0 &&
               strncmp(path, "/quote/", 7) != 0 && !routes_not_forwarded(path)) {
        /* Every route not ours; admin routes and paths above the root
         * never; and only origin-form
         * targets: "https://h/admin" or "ftp://h/admin" would reach the
         * upstream as sent, and a server must accept the absolute form. */
        handle_proxied(s, req, path);
    } else {
        send_error(s, req, R_OTHER, 404, "no_route", "no such route");
    }
}

/* Every request gets its id (and, with --access-log, its line) first. */
static void on_public(void *arg, http_req *req)
{
    server *s = arg;
    access_log_begin(s->d.alog, req);
    route_public(s, req);
    access_log_end();
}

/* ---- admin ---- */

/* An admin purge waiting for its acknowledgements: the bump or its
 * announcement (invalidate.c), and for a purge of everything on a proxy
 * with shared routes the `a` that drops every worker's in-process copies
 * (proxy.c), so that a 200 means no instance serves them past a loop pass. */
typedef struct purge_ctx {
    server *s;
    http_req *req;
    long long product_id;
    int pending; /* acknowledgements still awaited */
    bool ok;     /* the bump's */
} purge_ctx;

static void purge_answer(purge_ctx *c)
{
    http_req *req = c->req;
    if (!c->ok) {
        send_error(c->s, req, R_ADMIN, 503, "invalidation_failed",
                   "dropped here, but could not be announced to other instances");
    } else {
        char body[96];
        int n = c->product_id
                    ? snprintf(body, sizeof(body),
                               "{\"invalidated\":\"product\",\"product_id\":%lld}", c->product_id)
                    : snprintf(body, sizeof(body), "{\"invalidated\":\"all\"}");
        send_json(c->s, req, 200, body, (size_t)n);
        metrics_request(R_ADMIN, 200, X_NONE, 0);
    }
    c->s->inflight--;
    free(c);
}

static void purge_acked(purge_ctx *c)
{
    if (--c->pending == 0)
        purge_answer(c);
}

static void on_purged(void *arg, bool ok)
{
    purge_ctx *c = arg;
    c->ok = ok;
    purge_acked(c);
}

/* The in-process copies' announcement: not acknowledged, the other
 * workers' copies still go within SHOT_MS; the answer says the bump's. */
static void on_purge_announced(void *arg, int status, long long result)
{
    (void)status;
    (void)result;
    purge_acked(arg);
}

/* Constant time whatever the lengths: compare digests, not strings. */
static bool token_ok(const char *given, const char *want)
{
    unsigned char a[32], b[32];
    unsigned int la = 0, lb = 0;
    EVP_Digest(given, strlen(given), a, &la, EVP_sha256(), NULL);
    EVP_Digest(want, strlen(want), b, &lb, EVP_sha256(), NULL);
    return la == 32 && lb == 32 && CRYPTO_memcmp(a, b, 32) == 0;
}

static bool admin_authorized(server *s, http_req *req)
{
    const char *token = s->d.cfg->admin_token;
    if (token == NULL)
        return true; /* the admin listener is loopback-only then */
    const char *auth = evhttp_find_header(req->in, "Authorization");
    return auth != NULL && strncmp(auth, "Bearer ", 7) == 0 && token_ok(auth + 7, token);
}

/* The body's bytes, for adminbody_parse_invalidate (4096 at most). */
static long long parse_invalidate(struct evbuffer *body)
{
    size_t len = evbuffer_get_length(body);
    if (len == 0 || len > ADMINBODY_MAX)
        return -1;
    return adminbody_parse_invalidate((const char *)evbuffer_pullup(body, (ev_ssize_t)len), len);
}

static void route_admin(server *s, http_req *req)
{
    if (reject_refused(s, req, R_ADMIN) || reject_unsafe(s, req, R_ADMIN, "POST"))
        return;
    if (strcmp(req->target, "/admin/invalidate") != 0) {
        send_error(s, req, R_ADMIN, 404, "no_route", "no such route");
        return;
    }
    if (!admin_authorized(s, req)) {
        send_error(s, req, R_ADMIN, 401, "unauthorized", "a valid bearer token is required");
        return;
    }
    if (!method_ok(s, req, "POST", EVHTTP_REQ_POST, R_ADMIN))
        return;
    long long pid = parse_invalidate(req->body);
    if (pid < 0) {
        send_error(s, req, R_ADMIN, 400, "bad_request",
                   "body must be {\"product_id\": N} with N > 0, or {\"all\": true}");
        return;
    }
    purge_ctx *c = xcalloc(1, sizeof(*c));
    c->s = s;
    c->req = req;
    c->product_id = pid;
    /* The bump, the announcement, and this call's hold: neither
     * acknowledgement answers before both calls have returned. */
    c->pending = 3;
    s->inflight++;
    invalidate_purge(s->d.inv, pid, on_purged, c);
    /* After the global bump is sent, as for writes (proxy.c). */
    if (!(pid == 0 && s->d.px != NULL && proxy_purged(s->d.px, on_purge_announced, c)))
        c->pending--; /* no announcement to wait for */
    purge_acked(c);
}

static void on_admin(void *arg, http_req *req)
{
    server *s = arg;
    access_log_begin(s->d.alog, req);
    route_admin(s, req);
    access_log_end();
}

/* ---- listeners ---- */

static bool is_loopback(const char *host)
{
    return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
           strcmp(host, "::1") == 0;
}

/* Serves one listener (fd, inherited from the master; or opened here when
 * -1). Returns it, or NULL with err filled. */
static http_listener *http_listen(server *s, const hostport *hp, evutil_socket_t fd,
                                  size_t max_conns, http_handler *handler, char *err, size_t errlen)
{
    const qc_config *cfg = s->d.cfg;
    if (fd < 0)
        fd = listener_open(hp, err, errlen);
    if (fd < 0)
        return NULL;
    /* Answering is bounded by the deadlines of lookup (a wait on another
     * instance's lock, then a load of our own, perhaps once more after a
     * fenced store); this backstop only catches what escapes them. */
    int busy_ms = 2 * (cfg->lock_ttl_ms + cfg->pg_timeout_ms + cfg->tax_timeout_ms) +
                  cfg->pg_timeout_ms + 1000;
    if (cfg->upstream != NULL && busy_ms < cfg->upstream_timeout_ms + 1000)
        busy_ms = cfg->upstream_timeout_ms + 1000; /* a proxied request ends by its deadline */
    http_listen_opts o = {
        .lim = {(size_t)cfg->max_uri, (size_t)cfg->max_headers, (size_t)cfg->max_body},
        .max_conns = max_conns,
        .header_ms = cfg->header_timeout_s * 1000,
        .busy_ms = busy_ms,
        .idle_ms = cfg->idle_timeout_s * 1000,
    };
    http_listener *l = http_listener_new(s->base, fd, &o, handler, s);
    if (l == NULL)
        snprintf(err, errlen, "cannot listen on %s:%d", hp->host, hp->port);
    return l;
}

server *server_new(struct event_base *base, const server_deps *deps, char *err, size_t errlen)
{
    const qc_config *cfg = deps->cfg;
    if (cfg->admin_enabled && cfg->admin_token == NULL && !is_loopback(cfg->admin_listen.host)) {
        snprintf(err, errlen, "--admin-listen on a non-loopback address needs --admin-token");
        return NULL;
    }
    server *s = xcalloc(1, sizeof(*s));
    s->base = base;
    s->d = *deps;
    s->ready_timer = evtimer_new(base, on_ready_timer, s);
    s->health_timer = event_new(base, -1, EV_PERSIST, on_health_timer, s);
    struct timeval every = {0, SERVER_HEALTH_PUBLISH_MS * 1000};
    evtimer_add(s->health_timer, &every);
    on_health_timer(-1, 0, s); /* listening from now: counted at once */
    catalog_on_ready(s->d.cat, on_catalog_ready, s);
    s->pub = http_listen(s, &cfg->listen, cfg->listen_fd, (size_t)cfg->max_conns, on_public, err,
                         errlen);
    if (s->pub == NULL)
        goto fail;
    if (cfg->admin_enabled) {
        s->admin = http_listen(s, &cfg->admin_listen, cfg->admin_fd, SERVER_ADMIN_MAX_CONNS,
                               on_admin, err, errlen);
        if (s->admin == NULL)
            goto fail;
    }
    return s;
fail:
    catalog_on_ready(s->d.cat, NULL, NULL);
    server_free(s);
    return NULL;
}

void server_stop_accepting(server *s)
{
    s->draining = true;
    /* A draining worker is no longer part of the instance's health; and its
     * dependencies are freed before the server is. */
    evtimer_del(s->health_timer);
    metrics_state_publish(0);
    http_listener_stop(s->pub);
    http_listener_stop(s->admin);
}

size_t server_inflight(const server *s)
{
    return s->inflight + http_listener_unsent(s->pub) + http_listener_unsent(s->admin);
}

size_t server_connections(const server *s)
{
    return http_listener_connections(s->pub) + http_listener_connections(s->admin);
}

void server_free(server *s)
{
    if (s == NULL)
        return;
    /* The catalog is freed first (main.c): it calls nobody any more. */
    while (s->waiting != NULL)
        refuse_waiting(s, pop_waiting(s));
    http_listener_free(s->pub);
    http_listener_free(s->admin);
    event_free(s->ready_timer);
    event_free(s->health_timer);
    metrics_state_publish(0); /* no longer listening */
    free(s);
}
