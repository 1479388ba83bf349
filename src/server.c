/* server: owns the evhttp instances of one worker, their listening sockets,
 * the per-request context of every public request until it is answered,
 * and the count of client connections. */
#include "quotecache/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
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
#include "quotecache/conntrack.h"
#include "quotecache/health.h"
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
/* The command of a request whose method evhttp does not know: libevent
 * 2.1.12's EVHTTP_REQ_UNKNOWN_, internal (http-internal.h), not in
 * event2/http.h. evhttp lets it through when it is in the allowed mask. */
#define SERVER_REQ_UNKNOWN (1 << 15)

/* A quote request that arrived before the first catalog load. */
typedef struct ready_wait {
    struct ready_wait *next, *prev;
    server *s;
    struct evhttp_request *req;
    struct event *gone; /* the client's close, while it waits (EV_CLOSED) */
    quote_req r;
    struct timespec deadline;
} ready_wait;

struct server {
    struct event_base *base;
    server_deps d;
    struct evhttp *pub;
    struct evhttp *admin;
    struct evhttp_bound_socket *pub_sock;
    struct evhttp_bound_socket *admin_sock;
    conntrack *pub_conns, *admin_conns;
    size_t inflight;
    ready_wait *waiting, *waiting_tail; /* FIFO: deadlines in order */
    size_t nwaiting;
    struct event *ready_timer;
    struct event *health_timer; /* publishes this worker's health for /healthz */
    bool draining;              /* stopped accepting: every answer closes its connection */
    char date[40];              /* the Date value of second date_sec */
    time_t date_sec;
};

typedef struct req_ctx {
    server *s;
    struct evhttp_request *req;
    struct timespec started;
    char inm[INM_MAX];  /* If-None-Match, "" when absent */
    lookup_req *lr;     /* until answered */
    proxy_op *px;       /* instead of lr: a request passed to the upstream */
    struct event *gone; /* watches the client while lookup has the request */
} req_ctx;

/* ---- replies ---- */

static double seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

static conntrack *conns_of(server *s, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (evcon != NULL && s->admin != NULL && evhttp_connection_get_server(evcon) == s->admin)
        return s->admin_conns;
    return s->pub_conns;
}

/* The Date value of this second, formatted once per second (evhttp formats
 * one per answer when none is set). The second is read from the clock (a
 * vDSO call): the loop's cached time lags a step of the wall clock by up
 * to 5 s. */
static const char *date_now(server *s)
{
    time_t t = time(NULL);
    if (t != s->date_sec || s->date[0] == '\0') {
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(s->date, sizeof(s->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        s->date_sec = t;
    }
    return s->date;
}

static void unref_body(const void *data, size_t len, void *extra)
{
    (void)data;
    (void)len;
    hot_value_unref(extra);
}

/* Every answer leaves through here, exactly once per request: the status,
 * the headers already set, a fixed set (Date, Content-Type and
 * Content-Length), and the body: copied, or for an in-process copy (hot)
 * sent by reference with its ready Content-Length. A HEAD gets the same
 * headers and no body (evhttp 2.1 adds no length to a HEAD answer but
 * would still write the body it is given, corrupting the next answer on
 * the connection). 304 has neither body nor length. */
/* A draining worker closes every connection after its answer: said in the
 * answer, also to requests that arrived before the drain began, so a
 * client (or a load balancer) does not send the next request on it. */
static void close_if_draining(server *s, struct evhttp_request *req)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    if (s->draining && evhttp_find_header(h, "Connection") == NULL)
        evhttp_add_header(h, "Connection", "close");
}

static void send_body(server *s, struct evhttp_request *req, int status, const char *ctype,
                      const char *body, size_t len, const hot_entry *hot)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    bool has_body = status != 304 && status != 204;
    close_if_draining(s, req);
    evhttp_add_header(h, "Date", date_now(s));
    /* Headers every answer carries go here. */
    if (has_body) {
        char n[24];
        if (hot == NULL)
            snprintf(n, sizeof(n), "%zu", len);
        evhttp_add_header(h, "Content-Type", ctype);
        evhttp_add_header(h, "Content-Length", hot ? hot->content_length : n);
        if (evhttp_request_get_command(req) != EVHTTP_REQ_HEAD) {
            struct evbuffer *out = evhttp_request_get_output_buffer(req);
            if (hot != NULL)
                evbuffer_add_reference(out, body, len, unref_body, hot_value_ref(hot));
            else
                evbuffer_add(out, body, len);
        }
    }
    conntrack *ct = conns_of(s, req);
    if (ct != NULL)
        conntrack_on_reply(ct, req); /* before the send, which may free req */
    evhttp_send_reply(req, status, NULL, NULL);
}

static void send_reply(server *s, struct evhttp_request *req, int status, const char *ctype,
                       const char *body, size_t len)
{
    send_body(s, req, status, ctype, body, len, NULL);
}

static void send_json(server *s, struct evhttp_request *req, int status, const char *body,
                      size_t len)
{
    send_body(s, req, status, "application/json", body, len, NULL);
}

/* An error document, counted under route. */
static void send_error(server *s, struct evhttp_request *req, enum metrics_route route, int status,
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
static void reply_quote(server *s, struct evhttp_request *req, const char *inm,
                        const struct timespec *started, int64_t now_ms, const lookup_answer *a)
{
    struct evkeyvalq *h = evhttp_request_get_output_headers(req);
    const char *x = metrics_xcache_name(a->xcache);
    if (x)
        evhttp_add_header(h, "X-Cache", x);
    char cs[64];
    int ttl_s = a->status == 200 ? s->d.cfg->ttl_s : s->d.cfg->neg_ttl_s; /* 404s: --neg-ttl */
    cache_status_render(cs, sizeof(cs), a->xcache, a->stored_at_ms, ttl_s, now_ms);
    evhttp_add_header(h, "Cache-Status", cs);
    int64_t age = cache_status_age(a->xcache, a->stored_at_ms, now_ms);
    if (age >= 0) {
        char agebuf[24];
        strbuf ab = strbuf_on(agebuf, sizeof(agebuf));
        strbuf_i64(&ab, age);
        evhttp_add_header(h, "Age", agebuf);
    }
    int status = a->status;
    if (a->retry_after_s > 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", a->retry_after_s);
        evhttp_add_header(h, "Retry-After", ra);
    }
    if (a->etag != NULL) {
        char tag[ENVELOPE_ETAG_LEN + 3];
        if (a->hot == NULL)
            snprintf(tag, sizeof(tag), "\"%s\"", a->etag);
        evhttp_add_header(h, "ETag", a->hot ? a->hot->etag_quoted : tag);
        evhttp_add_header(h, "Cache-Control", "no-cache");
    }
    if (a->etag != NULL && inm != NULL && inm[0] && etag_matches(inm, a->etag))
        status = 304;
    send_body(s, req, status, "application/json", a->body, a->len, a->hot);
    metrics_request(R_QUOTE, status, a->xcache, seconds_since(started));
}

static void on_answer(void *arg, const lookup_answer *a)
{
    req_ctx *c = arg;
    if (c->gone)
        event_free(c->gone);
    reply_quote(c->s, c->req, c->inm, &c->started, wall_now_ms(), a);
    c->s->inflight--;
    free(c);
}

/* evhttp 2.1.12 stops reading a connection while its request is handled
 * (evhttp_handle_request disables EV_READ), so it sees a client that closed
 * only when the answer is written, and a close callback would fire only
 * then. Meanwhile the socket is watched here for the peer's close alone
 * (EV_CLOSED: EPOLLRDHUP, seen even behind unread bytes of a pipelined
 * request, which stay for evhttp): the client has gone, so its request
 * leaves its flight at once (the load goes on) and the connection is
 * freed, request included, with no answer. A client that only half-closes
 * (SHUT_WR) counts as gone, as in nginx. Where the backend cannot report
 * a close apart from data, readable is peeked instead: EOF or an error is
 * a close, bytes end the watch. */
/* Watches req's socket for the client's close alone (EV_CLOSED), where the
 * backend can tell it from data; NULL where it cannot. */
static struct event *watch_close(server *s, struct evhttp_request *req, event_callback_fn cb,
                                 void *arg)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd < 0 || !(event_base_get_features(s->base) & EV_FEATURE_EARLY_CLOSE))
        return NULL;
    struct event *ev = event_new(s->base, fd, EV_CLOSED | EV_PERSIST, cb, arg);
    if (ev)
        event_add(ev, NULL);
    return ev;
}

static void client_gone(req_ctx *c)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(c->req);
    event_free(c->gone);
    c->gone = NULL;
    if (c->px != NULL)
        proxy_cancel(c->px);
    else
        lookup_cancel(c->lr);
    c->s->inflight--;
    free(c);
    evhttp_connection_free(evcon);
}

static void on_client_closed(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    client_gone(arg);
}

static void on_client_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    req_ctx *c = arg;
    char byte;
    ssize_t n = recv(fd, &byte, 1, MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n > 0) {
        event_free(c->gone);
        c->gone = NULL;
        return;
    }
    client_gone(c);
}

static void watch_client(req_ctx *c)
{
    c->gone = watch_close(c->s, c->req, on_client_closed, c);
    struct evhttp_connection *evcon = evhttp_request_get_connection(c->req);
    struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (c->gone == NULL && fd >= 0) {
        c->gone = event_new(c->s->base, fd, EV_READ | EV_PERSIST, on_client_readable, c);
        if (c->gone)
            event_add(c->gone, NULL);
    }
}

static bool header_has_token(const char *value, const char *token)
{
    return httphdr_has_token(value, token);
}

/* Checks what only the catalog knows. Returns true when it answered. */
static bool reject_unknown(server *s, struct evhttp_request *req, const quote_req *r)
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
static void quote_validated(server *s, struct evhttp_request *req, const quote_req *r)
{
    if (reject_unknown(s, req, r))
        return;
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
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
    watch_client(c);
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
    if (w->gone)
        event_free(w->gone);
    w->gone = NULL;
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
static void on_waiting_client_closed(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ready_wait *w = arg;
    struct evhttp_connection *evcon = evhttp_request_get_connection(w->req);
    unlink_waiting(w->s, w);
    free(w);
    evhttp_connection_free(evcon);
}

static void refuse_waiting(server *s, ready_wait *w)
{
    send_error(s, w->req, R_QUOTE, 503, "catalog_unavailable", "pricing data is not loaded yet");
    free(w);
}

/* Holds a valid quote request until the catalog is ready, for at most
 * --pg-timeout (the deadline of the load that would make it ready). */
static void wait_for_catalog(server *s, struct evhttp_request *req, const quote_req *r)
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
    w->gone = watch_close(s, req, on_waiting_client_closed, w);
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

static void handle_quote(server *s, struct evhttp_request *req, const char *id_segment,
                         const char *query)
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
static void handle_healthz(server *s, struct evhttp_request *req)
{
    static uint32_t words[HEALTH_MAX_WORKERS];
    if (!s->draining)
        metrics_state_publish(health_bits(s));
    health_view v;
    health_combine(words, metrics_states(words, HEALTH_MAX_WORKERS), &v);
    char body[224];
    size_t n = health_render(body, sizeof(body), &v);
    int code = v.code;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Cache-Control", "no-store");
    send_json(s, req, code, body, n);
    metrics_request(R_HEALTHZ, code, X_NONE, 0);
}

static void handle_metrics(server *s, struct evhttp_request *req)
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
static void send_proxied(server *s, struct evhttp_request *req, proxy_reply *r)
{
    proxyhdr_move_all(&r->headers, evhttp_request_get_output_headers(req));
    if (r->err != NULL) {
        metrics_proxy_request(r->route, r->err->status, r->xcache, r->upstream_seconds);
        send_error(s, req, R_OTHER, r->err->status, r->err->code, r->err->message);
        return;
    }
    metrics_proxy_request(r->route, r->status, r->xcache, r->upstream_seconds);
    close_if_draining(s, req);
    conntrack_on_reply(s->pub_conns, req);
    evhttp_send_reply(req, r->status, NULL, r->body);
    metrics_request(R_OTHER, r->status, r->xcache,
                    r->upstream_seconds < 0 ? 0 : r->upstream_seconds);
}

static void on_proxied(void *arg, proxy_reply *r)
{
    req_ctx *c = arg;
    if (c->gone)
        event_free(c->gone);
    c->s->inflight--;
    send_proxied(c->s, c->req, r);
    free(c);
}

static void handle_proxied(server *s, struct evhttp_request *req, const char *path)
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
    watch_client(c);
}

/* ---- limits and routing ---- */

static size_t headers_size(struct evhttp_request *req)
{
    size_t n = 0;
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next)
        n += strlen(kv->key) + strlen(kv->value) + 4;
    return n;
}

/* Whether what follows req on its connection is unknown: a body evhttp
 * 2.1 left unread (a HEAD, a TRACE or a method it does not know announces
 * one), or framing proxyhdr_check_framing refuses. */
static bool next_unknown(struct evhttp_request *req)
{
    const char *why;
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    bool unread = m == EVHTTP_REQ_HEAD || m == EVHTTP_REQ_TRACE || (int)m == SERVER_REQ_UNKNOWN;
    return proxyhdr_check_framing(in, &why) < 0 ||
           (unread && proxyhdr_check_bodyless(in, &why) < 0);
}

/* Answers requests that break a size limit. Returns true when it did.
 * Its 414 and 431 come before reject_unsafe's checks: they close the
 * connection when the next request's first byte is unknown (a HEAD with
 * a body and a long URI had its body read as the next request). */
static bool reject_oversized(server *s, struct evhttp_request *req, enum metrics_route route)
{
    int status = 0;
    if (strlen(evhttp_request_get_uri(req)) > (size_t)s->d.cfg->max_uri)
        status = 414;
    else if (headers_size(req) > (size_t)s->d.cfg->max_headers)
        status = 431;
    if (status != 0) {
        if (next_unknown(req))
            evhttp_add_header(evhttp_request_get_output_headers(req), "Connection", "close");
        if (status == 414)
            send_error(s, req, route, 414, "uri_too_long", "the request URI is too long");
        else
            send_error(s, req, route, 431, "headers_too_large",
                       "the request headers are too large");
        return true;
    }
    if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > (size_t)s->d.cfg->max_body) {
        send_error(s, req, route, 413, "body_too_large", "the request body is over --max-body");
        return true;
    }
    return false;
}

static bool method_ok(server *s, struct evhttp_request *req, const char *allow,
                      enum evhttp_cmd_type want, enum metrics_route route)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (m == want || (want == EVHTTP_REQ_GET && m == EVHTTP_REQ_HEAD))
        return true;
    evhttp_add_header(evhttp_request_get_output_headers(req), "Allow", allow);
    send_error(s, req, route, 405, "method_not_allowed", "method not allowed on this route");
    return false;
}

/* The checks every listener runs before routing, so that a request is
 * read here as anything behind us would read it. allow: the Allow of the
 * listener's 405 to TRACE and CONNECT (NULL: none to give). Returns true
 * when it answered. A request it lets through whose body evhttp did not
 * read gets Connection: close on its answer. */
static bool reject_unsafe(server *s, struct evhttp_request *req, enum metrics_route route,
                          const char *allow)
{
    const char *why;
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    bool bodyless = m == EVHTTP_REQ_HEAD || m == EVHTTP_REQ_TRACE;
    const char *host;
    if (!proxyhdr_names_valid(in)) {
        /* evhttp takes any name up to the colon: "Transfer-Encoding :
         * chunked" is no framing field to it, nor to proxyhdr, and was
         * passed on as it came to an upstream that may read it as one (a
         * body framed by its Content-Length here, chunked there: the rest
         * a request of the client's making). RFC 9112 5.1: a 400. */
        evhttp_add_header(out, "Connection", "close");
        send_error(s, req, route, 400, "bad_field", "a field name that is not a token");
        return true;
    }
    if (!proxyhdr_target_valid(evhttp_request_get_uri(req))) {
        /* Its framing is known: the connection stays. */
        send_error(s, req, route, 400, "bad_target",
                   "a request target with a space or a control character");
        return true;
    }
    if (proxyhdr_check_framing(in, &why) < 0 ||
        (bodyless && proxyhdr_check_bodyless(in, &why) < 0)) {
        /* The next request's first byte is unknown: close after the 400. */
        evhttp_add_header(out, "Connection", "close");
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
            evhttp_add_header(out, "Allow", allow);
        send_error(s, req, route, 405, "method_not_allowed", "method not allowed");
        return true;
    }
    /* An unknown method's body is left unread (as HEAD's): it would be
     * parsed as the next request. */
    if ((int)m == SERVER_REQ_UNKNOWN && proxyhdr_check_bodyless(in, &why) < 0)
        evhttp_add_header(out, "Connection", "close");
    return false;
}

static void route_public(server *s, struct evhttp_request *req)
{
    conntrack_on_request(s->pub_conns, req);
    if (reject_oversized(s, req, R_OTHER) || reject_unsafe(s, req, R_OTHER, NULL))
        return;
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    char path[4096 + 1];
    const char *uri = evhttp_request_get_uri(req);
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
    } else if ((int)m == SERVER_REQ_UNKNOWN) {
        /* On no other route, and never to the upstream: evhttp 2.1 keeps
         * no method name to send it by, nor the body. */
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
static void on_public(struct evhttp_request *req, void *arg)
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
    struct evhttp_request *req;
    long long product_id;
    int pending; /* acknowledgements still awaited */
    bool ok;     /* the bump's */
} purge_ctx;

static void purge_answer(purge_ctx *c)
{
    struct evhttp_request *req = c->req;
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

static bool admin_authorized(server *s, struct evhttp_request *req)
{
    const char *token = s->d.cfg->admin_token;
    if (token == NULL)
        return true; /* the admin listener is loopback-only then */
    const char *auth = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
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

static void route_admin(server *s, struct evhttp_request *req)
{
    conntrack_on_request(s->admin_conns, req);
    if (reject_oversized(s, req, R_ADMIN) || reject_unsafe(s, req, R_ADMIN, "POST"))
        return;
    if (strcmp(evhttp_request_get_uri(req), "/admin/invalidate") != 0) {
        send_error(s, req, R_ADMIN, 404, "no_route", "no such route");
        return;
    }
    if (!admin_authorized(s, req)) {
        send_error(s, req, R_ADMIN, 401, "unauthorized", "a valid bearer token is required");
        return;
    }
    if (!method_ok(s, req, "POST", EVHTTP_REQ_POST, R_ADMIN))
        return;
    long long pid = parse_invalidate(evhttp_request_get_input_buffer(req));
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

static void on_admin(struct evhttp_request *req, void *arg)
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
 * -1) with a new evhttp and its connection tracker. Returns the evhttp, or NULL with err filled. */
static struct evhttp *http_listen(server *s, const hostport *hp, evutil_socket_t fd,
                                  size_t max_conns, struct evhttp_bound_socket **sock,
                                  conntrack **conns, char *err, size_t errlen)
{
    const qc_config *cfg = s->d.cfg;
    if (fd < 0)
        fd = listener_open(hp, err, errlen);
    if (fd < 0)
        return NULL;
    struct evhttp *h = evhttp_new(s->base);
    /* evhttp's own limit is well past ours, so that oversized requests get
     * our JSON 414/431 (it counts the request line too); only requests far
     * past both are cut by evhttp itself. */
    evhttp_set_max_headers_size(h, (ev_ssize_t)(2 * cfg->max_headers + cfg->max_uri + 1024));
    /* The same for bodies: up to twice --max-body evhttp reads them and we
     * answer our JSON 413; past that evhttp refuses (413, closed). */
    evhttp_set_max_body_size(h, (ev_ssize_t)(2 * (size_t)cfg->max_body + 1024));
    /* evhttp's timeout is per read: it cuts idle connections; conntrack
     * cuts slow senders, whatever their pace. */
    evhttp_set_timeout(h, cfg->idle_timeout_s);
    /* TRACE, CONNECT and methods evhttp does not know reach our routing
     * for a JSON 405 or 501 (evhttp's own refusal is an HTML 501). */
    evhttp_set_allowed_methods(h, EVHTTP_REQ_GET | EVHTTP_REQ_HEAD | EVHTTP_REQ_POST |
                                      EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS |
                                      EVHTTP_REQ_PATCH | EVHTTP_REQ_TRACE | EVHTTP_REQ_CONNECT |
                                      SERVER_REQ_UNKNOWN);
    *sock = evhttp_accept_socket_with_handle(h, fd);
    /* Answering is bounded by the deadlines of lookup (a wait on another
     * instance's lock, then a load of our own, perhaps once more after a
     * fenced store); this backstop only catches what escapes them. */
    int busy_ms = 2 * (cfg->lock_ttl_ms + cfg->pg_timeout_ms + cfg->tax_timeout_ms) +
                  cfg->pg_timeout_ms + 1000;
    if (cfg->upstream != NULL && busy_ms < cfg->upstream_timeout_ms + 1000)
        busy_ms = cfg->upstream_timeout_ms + 1000; /* a proxied request ends by its deadline */
    *conns = conntrack_new(s->base, evhttp_bound_socket_get_listener(*sock), max_conns,
                           cfg->header_timeout_s * 1000, busy_ms);
    evhttp_set_bevcb(h, conntrack_on_accept, *conns);
    return h;
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
    s->pub = http_listen(s, &cfg->listen, cfg->listen_fd, (size_t)cfg->max_conns, &s->pub_sock,
                         &s->pub_conns, err, errlen);
    if (s->pub == NULL)
        goto fail;
    evhttp_set_gencb(s->pub, on_public, s);
    if (cfg->admin_enabled) {
        s->admin = http_listen(s, &cfg->admin_listen, cfg->admin_fd, SERVER_ADMIN_MAX_CONNS,
                               &s->admin_sock, &s->admin_conns, err, errlen);
        if (s->admin == NULL)
            goto fail;
        evhttp_set_gencb(s->admin, on_admin, s);
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
    if (s->pub_sock) {
        conntrack_forget(s->pub_conns);
        evhttp_del_accept_socket(s->pub, s->pub_sock);
        s->pub_sock = NULL;
    }
    if (s->admin_sock) {
        conntrack_forget(s->admin_conns);
        evhttp_del_accept_socket(s->admin, s->admin_sock);
        s->admin_sock = NULL;
    }
}

size_t server_inflight(const server *s)
{
    return s->inflight;
}

size_t server_connections(const server *s)
{
    return conntrack_count(s->pub_conns) + (s->admin_conns ? conntrack_count(s->admin_conns) : 0);
}

void server_free(server *s)
{
    if (s == NULL)
        return;
    /* The catalog is freed first (main.c): it calls nobody any more. */
    while (s->waiting != NULL)
        refuse_waiting(s, pop_waiting(s));
    if (s->pub)
        evhttp_free(s->pub);
    if (s->admin)
        evhttp_free(s->admin);
    conntrack_free(s->pub_conns);
    conntrack_free(s->admin_conns);
    event_free(s->ready_timer);
    event_free(s->health_timer);
    metrics_state_publish(0); /* no longer listening */
    free(s);
}
