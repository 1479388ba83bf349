/* upstream: owns the keep-alive connections to the application behind us
 * and every forwarded request in flight.
 *
 * An op's life (one transition function, op_enter):
 *   SENT   on the wire, its deadline armed, evhttp holds the request;
 *   READY  the answer (or our error) is held and the fire event queued, so
 *          the owner's callback never runs inside evhttp or upstream_forward;
 *   DEAD   the owner left (upstream_cancel): the fire event only frees.
 * Leaving SENT other than by evhttp's own callback (deadline, cancel)
 * frees the op's connection, which frees evhttp's request with no
 * callback and closes the socket, so the upstream sees the abort too.
 * Connections are never freed inside their own callbacks: those go to a
 * graveyard reaped from the loop. */
#include "quotecache/upstream.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netdb.h>
#include <sys/queue.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "quotecache/graveyard.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/proxyhdr.h"

#define UPSTREAM_MAX_IDLE 64
#define UPSTREAM_MAX_HEADERS (64 * 1024)
#define UPSTREAM_URI_MAX 8192

enum op_state { OP_SENT, OP_READY, OP_DEAD };

struct upstream_op {
    struct upstream_op *next, *prev; /* every live op, for shutdown */
    upstream *u;
    enum op_state state;
    upstream_cb *cb; /* NULL once the owner left */
    void *arg;
    /* What is sent, kept so that a stale keep-alive connection can be
     * retried once on a fresh one: the client's request itself (it lives
     * until its answer, which waits for this op), read again on a retry
     * rather than its headers copied aside for one, and what it no longer
     * holds (its body, drained into ours, and its peer). */
    enum evhttp_cmd_type method;
    char *uri;
    struct evhttp_request *client; /* NULL for a fetch (upstream_fetch) */
    struct evkeyvalq own;          /* a fetch's fields, owned: no client to read again */
    char request_id[64];           /* a fetch's X-Request-Id ("" none) */
    char peer[64];
    struct evbuffer *body;
    bool reused_conn; /* the connection came from the idle list */
    bool retried;
    struct evhttp_connection *conn; /* while SENT */
    enum evhttp_request_error fail; /* evhttp's reason, when it failed us */
    bool failed;
    struct event deadline; /* embedded: no allocation per request */
    struct event fire;
    struct timespec sent_at;
    /* The answer. */
    qc_error err;
    bool has_err;
    int status;
    struct evkeyvalq rhdrs;
    struct evbuffer *rbody;
};

struct upstream {
    struct event_base *base;
    char host[256]; /* as given: the Host of requests that carry none */
    char addr[64];  /* resolved once at start: connecting never blocks */
    int port;
    char prefix[512];
    int timeout_ms;
    size_t max_body;
    int max_conns;
    int active;
    upstream_op *ops;
    struct evhttp_connection *idle[UPSTREAM_MAX_IDLE]; /* a stack: the warmest on top */
    int nidle;
    graveyard *graveyard; /* connections freed from the loop */
};

/* ---- connections ---- */

/* From inside an evhttp callback of conn: keep it for the next request,
 * or free it from the loop. evhttp reconnects a kept connection that the
 * upstream closed (Connection: close, idle close) by itself. */
static void conn_release(upstream *u, struct evhttp_connection *conn, bool reusable)
{
    if (reusable && u->nidle < UPSTREAM_MAX_IDLE) {
        u->idle[u->nidle++] = conn;
        return;
    }
    graveyard_bury(u->graveyard, conn);
}

/* An idle connection, or a new one (always when fresh: a retry must not
 * meet another stale one). */
static struct evhttp_connection *conn_get(upstream *u, bool fresh, bool *reused)
{
    *reused = !fresh && u->nidle > 0;
    if (*reused)
        return u->idle[--u->nidle];
    struct evhttp_connection *c =
        evhttp_connection_base_new(u->base, NULL, u->addr, (unsigned short)u->port);
    if (c == NULL)
        return NULL;
    evhttp_connection_set_retries(c, 0);
    /* Our deadline ends a request; evhttp's per-read timeout only bounds
     * what could escape it. */
    evhttp_connection_set_timeout(c, u->timeout_ms / 1000 + 2);
    evhttp_connection_set_max_body_size(c, (ev_ssize_t)u->max_body);
    evhttp_connection_set_max_headers_size(c, UPSTREAM_MAX_HEADERS);
    return c;
}

/* ---- ops ---- */

static double seconds_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) + (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

static void op_free(upstream_op *op)
{
    upstream *u = op->u;
    if (op->prev)
        op->prev->next = op->next;
    else
        u->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    event_del(&op->deadline);
    event_del(&op->fire);
    evhttp_clear_headers(&op->rhdrs);
    evhttp_clear_headers(&op->own);
    evbuffer_free(op->body);
    evbuffer_free(op->rbody);
    free(op->uri);
    free(op);
}

/* Leaves SENT without evhttp's callback: the connection (and evhttp's
 * request with it) is freed now; we are never inside its callbacks here. */
static void op_abort_conn(upstream_op *op)
{
    evhttp_connection_free(op->conn);
    op->conn = NULL;
    op->u->active--;
}

/* The one place an op changes state. Legal: SENT -> READY (answer, error,
 * deadline), SENT -> DEAD and READY -> DEAD (cancel). */
static void op_enter(upstream_op *op, enum op_state to)
{
    bool legal = (op->state == OP_SENT && (to == OP_READY || to == OP_DEAD)) ||
                 (op->state == OP_READY && to == OP_DEAD);
    if (!legal) {
        log_error("upstream: illegal op transition %d -> %d", (int)op->state, (int)to);
        abort();
    }
    log_debug("upstream %s: state %d -> %d", op->uri, (int)op->state, (int)to);
    if (op->state == OP_SENT) {
        evtimer_del(&op->deadline);
        event_active(&op->fire, EV_TIMEOUT, 1);
    }
    op->state = to;
}

static void op_error(upstream_op *op, int status, const char *code, const char *msg)
{
    op->has_err = true;
    qc_error_set(&op->err, status, code, "%s", msg);
}

static int op_send(upstream_op *op);
static void copy_request(upstream_op *op, struct evkeyvalq *out);

static void on_error(enum evhttp_request_error e, void *arg)
{
    upstream_op *op = arg;
    op->failed = true;
    op->fail = e;
}

static bool idempotent(enum evhttp_cmd_type m)
{
    return m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD || m == EVHTTP_REQ_PUT ||
           m == EVHTTP_REQ_DELETE || m == EVHTTP_REQ_OPTIONS;
}

/* Takes the answer out of evhttp's request, which it frees after us (its
 * fields are moved, not copied: evhttp reads them only before calling
 * us). */
static void take_answer(upstream_op *op, struct evhttp_request *req)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    op->status = evhttp_request_get_response_code(req);
    proxyhdr_move_end_to_end(in, &op->rhdrs, proxyhdr_response_skip);
    /* A HEAD or 304 has no body here: its Content-Length describes the
     * representation and goes through; other bodies are framed by us. */
    const char *cl = evhttp_find_header(in, "Content-Length");
    if (cl != NULL && (op->method == EVHTTP_REQ_HEAD || op->status == 304))
        evhttp_add_header(&op->rhdrs, "Content-Length", cl);
    char via[4096], full[4200];
    if (proxyhdr_join(in, "Via", via, sizeof(via)) > 0)
        snprintf(full, sizeof(full), "%s, %s", via, PROXYHDR_VIA);
    else
        snprintf(full, sizeof(full), "%s", PROXYHDR_VIA);
    evhttp_add_header(&op->rhdrs, "Via", full);
    evbuffer_add_buffer(op->rbody, evhttp_request_get_input_buffer(req));
}

static void on_response(struct evhttp_request *req, void *arg)
{
    upstream_op *op = arg;
    upstream *u = op->u;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    struct evhttp_connection *conn = op->conn;
    op->conn = NULL;
    u->active--;
    conn_release(u, conn, code != 0);
    bool too_long_or_slow =
        op->failed && (op->fail == EVREQ_HTTP_DATA_TOO_LONG || op->fail == EVREQ_HTTP_TIMEOUT);
    if (code == 0 && op->reused_conn && !op->retried && idempotent(op->method) &&
        !too_long_or_slow) {
        /* The upstream may have closed an idle keep-alive connection as we
         * wrote to it: once, on a fresh one (idempotent methods only). */
        op->retried = true;
        if (op_send(op) < 0)
            op_enter(op, OP_READY);
        return;
    }
    if (code == 0 && op->failed && op->fail == EVREQ_HTTP_DATA_TOO_LONG)
        op_error(op, 502, "upstream_too_large", "the upstream answer is larger than --max-body");
    else if (code == 0 && op->failed && op->fail == EVREQ_HTTP_TIMEOUT)
        op_error(op, 504, "upstream_timeout", "the upstream did not answer in time");
    else if (code == 0)
        op_error(op, 502, "upstream_unavailable", "the upstream could not be reached or broke");
    else if (!proxyhdr_names_valid(evhttp_request_get_input_headers(req)))
        op_error(op, 502, "upstream_bad_field",
                 "the upstream sent a field name that is not a token");
    else
        take_answer(op, req);
    op_enter(op, OP_READY);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    upstream_op *op = arg;
    op_abort_conn(op);
    op_error(op, 504, "upstream_timeout", "the upstream did not answer in time");
    op_enter(op, OP_READY);
}

static void on_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    upstream_op *op = arg;
    if (op->state == OP_READY) {
        if (op->has_err)
            log_warn("upstream %s: %s", op->uri, op->err.message);
        upstream_answer a = {op->has_err ? &op->err : NULL, op->status, &op->rhdrs, op->rbody,
                             seconds_since(&op->sent_at)};
        op->cb(op->arg, &a);
    }
    op_free(op);
}

/* Puts the op's request on a connection. Returns 0, or -1 (op untouched
 * but for its failure) when no connection can take it. */
static int op_send(upstream_op *op)
{
    upstream *u = op->u;
    if (u->active >= u->max_conns) {
        op_error(op, 503, "upstream_busy", "too many requests to the upstream in flight");
        return -1;
    }
    struct evhttp_connection *conn = conn_get(u, op->retried, &op->reused_conn);
    if (conn == NULL) {
        op_error(op, 502, "upstream_unavailable", "cannot open a connection to the upstream");
        return -1;
    }
    struct evhttp_request *req = evhttp_request_new(on_response, op);
    evhttp_request_set_error_cb(req, on_error);
    copy_request(op, evhttp_request_get_output_headers(req));
    size_t len = evbuffer_get_length(op->body);
    if (len > 0)
        evbuffer_add(evhttp_request_get_output_buffer(req), evbuffer_pullup(op->body, -1), len);
    op->failed = false;
    if (evhttp_make_request(conn, req, op->method, op->uri) < 0) {
        /* evhttp has let go of req. */
        graveyard_bury(u->graveyard, conn);
        op_error(op, 502, "upstream_unavailable", "cannot send to the upstream");
        return -1;
    }
    op->conn = conn;
    u->active++;
    return 0;
}

/* The target toward the upstream: the prefix, then the client's target in
 * origin form (an absolute-form target loses its scheme and authority). */
static char *target_of(const upstream *u, const char *uri)
{
    const char *root = "";
    if (strncasecmp(uri, "http://", 7) == 0) {
        uri += 7 + strcspn(uri + 7, "/?"); /* "http://h?q" is "/?q": its query stays */
        root = uri[0] == '/' ? "" : "/";
    }
    size_t n = strlen(u->prefix) + strlen(root) + strlen(uri) + 1;
    char *t = xmalloc(n);
    snprintf(t, n, "%s%s%s", u->prefix, root, uri);
    return t;
}

/* The request's fields toward the upstream, straight from the client's
 * request into out (evhttp's outgoing request): one copy per send. */
static void copy_request(upstream_op *op, struct evkeyvalq *out)
{
    upstream *u = op->u;
    struct evkeyvalq *in = op->client ? evhttp_request_get_input_headers(op->client) : &op->own;
    proxyhdr_copy_end_to_end(in, out, proxyhdr_request_skip);
    proxyhdr_set_forwarded(in, out, op->peer, "http");
    /* The id we answer and log with (accesslog.c: the client's when valid,
     * else made), so that the application's logs name the same request;
     * the client's own field was skipped above, valid or not. */
    const char *id = op->client ? evhttp_find_header(evhttp_request_get_output_headers(op->client),
                                                     "X-Request-Id")
                                : (op->request_id[0] ? op->request_id : NULL);
    if (id != NULL)
        evhttp_add_header(out, "X-Request-Id", id);
    if (evhttp_find_header(in, "Host") == NULL) {
        char host[300];
        snprintf(host, sizeof(host), "%s:%d", u->host, u->port);
        evhttp_add_header(out, "Host", host);
    }
    /* Re-framed: whatever framing the client used (chunked included), the
     * upstream gets the body we hold with its exact length. evhttp adds a
     * length on its own only for POST and PUT. */
    size_t len = evbuffer_get_length(op->body);
    if (len > 0 || op->method == EVHTTP_REQ_POST || op->method == EVHTTP_REQ_PUT ||
        op->method == EVHTTP_REQ_PATCH) {
        char n[24];
        snprintf(n, sizeof(n), "%zu", len);
        evhttp_add_header(out, "Content-Length", n);
    }
}

/* What of the client's request does not stay with it: the body (drained
 * into ours, once) and the peer (its connection may go before a retry). */
static void keep_client(upstream_op *op, struct evhttp_request *req)
{
    op->client = req;
    char *ip = NULL;
    ev_uint16_t port = 0;
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (evcon != NULL)
        evhttp_connection_get_peer(evcon, &ip, &port);
    snprintf(op->peer, sizeof(op->peer), "%s", ip ? ip : "unknown");
    evbuffer_add_buffer(op->body, evhttp_request_get_input_buffer(req));
}

/* An op not yet sent, in the list of live ops. */
static upstream_op *op_new(upstream *u, enum evhttp_cmd_type method, const char *uri,
                           upstream_cb *cb, void *arg)
{
    upstream_op *op = xcalloc(1, sizeof(*op));
    op->u = u;
    op->state = OP_SENT;
    op->cb = cb;
    op->arg = arg;
    op->method = method;
    op->uri = target_of(u, uri);
    TAILQ_INIT(&op->rhdrs);
    TAILQ_INIT(&op->own);
    op->body = evbuffer_new();
    op->rbody = evbuffer_new();
    evtimer_assign(&op->deadline, u->base, on_deadline, op);
    event_assign(&op->fire, u->base, -1, 0, on_fire, op);
    op->next = u->ops;
    if (u->ops)
        u->ops->prev = op;
    u->ops = op;
    return op;
}

static upstream_op *op_start(upstream_op *op)
{
    upstream *u = op->u;
    clock_gettime(CLOCK_MONOTONIC, &op->sent_at);
    if (op_send(op) < 0) {
        op_enter(op, OP_READY); /* answered from the loop, as any failure */
        return op;
    }
    struct timeval tv = {u->timeout_ms / 1000, (u->timeout_ms % 1000) * 1000};
    evtimer_add(&op->deadline, &tv);
    return op;
}

upstream_op *upstream_forward(upstream *u, struct evhttp_request *req, upstream_cb *cb, void *arg)
{
    upstream_op *op =
        op_new(u, evhttp_request_get_command(req), evhttp_request_get_uri(req), cb, arg);
    keep_client(op, req);
    return op_start(op);
}

upstream_op *upstream_fetch(upstream *u, const char *target, const struct evkeyvalq *headers,
                            const char *peer, const char *request_id, upstream_cb *cb, void *arg)
{
    upstream_op *op = op_new(u, EVHTTP_REQ_GET, target, cb, arg);
    for (const struct evkeyval *kv = headers->tqh_first; kv; kv = kv->next.tqe_next)
        evhttp_add_header(&op->own, kv->key, kv->value);
    snprintf(op->peer, sizeof(op->peer), "%s", peer ? peer : "unknown");
    snprintf(op->request_id, sizeof(op->request_id), "%s", request_id ? request_id : "");
    return op_start(op);
}

void upstream_cancel(upstream_op *op)
{
    if (op->state == OP_SENT)
        op_abort_conn(op);
    op->cb = NULL;
    op->arg = NULL;
    op_enter(op, OP_DEAD);
}

/* ---- the client ---- */

int upstream_parse_url(const char *url, char *host, size_t hostlen, int *port, char *prefix,
                       size_t prefixlen)
{
    if (strncmp(url, "http://", 7) != 0)
        return -1;
    struct evhttp_uri *uri = evhttp_uri_parse(url);
    if (uri == NULL)
        return -1;
    const char *h = evhttp_uri_get_host(uri);
    const char *path = evhttp_uri_get_path(uri);
    int rc = -1;
    if (h != NULL && h[0] && strlen(h) < hostlen && (path == NULL || strlen(path) < prefixlen) &&
        evhttp_uri_get_query(uri) == NULL && evhttp_uri_get_fragment(uri) == NULL &&
        evhttp_uri_get_userinfo(uri) == NULL) {
        snprintf(host, hostlen, "%s", h);
        *port = evhttp_uri_get_port(uri) > 0 ? evhttp_uri_get_port(uri) : 80;
        snprintf(prefix, prefixlen, "%s", path ? path : "");
        size_t plen = strlen(prefix);
        while (plen > 0 && prefix[plen - 1] == '/')
            prefix[--plen] = '\0';
        rc = 0;
    }
    evhttp_uri_free(uri);
    return rc;
}

/* Resolves host once, at start (getaddrinfo blocks; the loop must not). */
static int resolve(const char *host, char *addr, size_t len)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
        return -1;
    int rc =
        getnameinfo(res->ai_addr, res->ai_addrlen, addr, (socklen_t)len, NULL, 0, NI_NUMERICHOST);
    freeaddrinfo(res);
    return rc == 0 ? 0 : -1;
}

upstream *upstream_new(struct event_base *base, const char *url, int timeout_ms, size_t max_body,
                       int max_conns, char *err, size_t errlen)
{
    upstream *u = xcalloc(1, sizeof(*u));
    if (upstream_parse_url(url, u->host, sizeof(u->host), &u->port, u->prefix, sizeof(u->prefix)) <
        0) {
        snprintf(err, errlen, "--upstream: expected http://HOST[:PORT][/PREFIX], got '%.100s'",
                 url);
        free(u);
        return NULL;
    }
    if (resolve(u->host, u->addr, sizeof(u->addr)) < 0) {
        snprintf(err, errlen, "--upstream: cannot resolve '%.100s'", u->host);
        free(u);
        return NULL;
    }
    u->base = base;
    u->timeout_ms = timeout_ms;
    u->max_body = max_body;
    u->max_conns = max_conns;
    u->graveyard = graveyard_new(base);
    return u;
}

void upstream_free(upstream *u)
{
    if (u == NULL)
        return;
    while (u->ops != NULL) {
        upstream_op *op = u->ops;
        if (op->state == OP_SENT) {
            op_abort_conn(op);
            op_error(op, 503, "shutting_down", "the proxy is shutting down");
            op->state = OP_READY;
        }
        if (op->state == OP_READY) {
            upstream_answer a = {op->has_err ? &op->err : NULL, op->status, &op->rhdrs, op->rbody,
                                 0};
            op->cb(op->arg, &a);
        }
        op_free(op);
    }
    for (int i = 0; i < u->nidle; i++)
        evhttp_connection_free(u->idle[i]);
    graveyard_free(u->graveyard);
    free(u);
}
