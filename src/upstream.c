/* upstream: owns the keep-alive connections to the application behind us
 * and every forwarded request in flight, over a small HTTP/1.1 client of
 * our own on non-blocking sockets (the answer is read by upresp.c).
 *
 * An op's life (one transition function, op_enter):
 *   SENT   on a connection (connecting, sending, or reading the answer),
 *          its deadline armed;
 *   READY  the answer (or our error) is held and the fire event queued, so
 *          the owner's callback never runs inside upstream_forward or our
 *          socket callbacks;
 *   DEAD   the owner left (upstream_cancel): the fire event only frees.
 *
 * A connection's life (one transition function, conn_enter):
 *   CONNECTING  connect() under way for the op it carries, whose request
 *               waits in obuf;
 *   BUSY        carrying an op: its request sent or being sent, its
 *               answer being read;
 *   IDLE        on the idle stack, carrying nothing;
 *   CLOSED      its socket closed and the connection freed (conn_close).
 * Its read event is registered from its socket's first moment to its last,
 * idle too, so that an upstream that closes an idle connection takes it
 * off the stack at once (and conn_take looks at it again before reuse:
 * that event may not have run yet); its write event only while
 * connecting or while the kernel took part of a request (EAGAIN).
 *
 * Ownership: an op in SENT owns its connection (op->conn, conn->op), the
 * idle stack owns the idle ones, nothing else holds one. Leaving SENT
 * other than by the answer (deadline, cancel, shutdown) closes the
 * connection, so the upstream sees the abort too. No code of another
 * module runs inside our socket callbacks (owners are called from the
 * fire event), so a connection may be closed and freed in its own
 * callback, as that callback's last act. */
#include "quotecache/upstream.h"

#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "quotecache/hdrlist.h"
#include "quotecache/httpconn.h"
#include "quotecache/httphdr.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/proxyhdr.h"
#include "quotecache/upresp.h"

/* What a connection's buffers start at and shrink back to after a larger
 * answer head or request: most requests and answers fit. */
#define UPSTREAM_IBUF 16384
#define UPSTREAM_OBUF 2048
/* An idle connection is closed after this long unused: before the usual
 * server-side keep-alive timeouts (Node.js and Apache 5 s), so that we, not
 * the server, end it and a request rarely meets one closing under it; and
 * a burst's connections do not stay open for good after it. */
#define UPSTREAM_IDLE_S 4.0

enum op_state { OP_SENT, OP_READY, OP_DEAD };
enum conn_state { CONN_CONNECTING, CONN_BUSY, CONN_IDLE, CONN_CLOSED };

typedef struct uconn uconn;

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
    http_req *client;     /* NULL for a fetch or a call (upstream_fetch, upstream_get) */
    bool bare;            /* a call: no forwarding fields (upstream_get) */
    struct evkeyvalq own; /* a fetch's fields, owned: no client to read again */
    char request_id[64];  /* a fetch's X-Request-Id ("" none) */
    char peer[64];
    struct evbuffer *body; /* NULL: none */
    bool retried;
    uconn *conn;           /* while SENT */
    struct event deadline; /* embedded: no allocation per request */
    struct event fire;
    struct timespec sent_at;
    /* The answer. */
    qc_error err;
    bool has_err;
    bool unreadable; /* the error is the answer's own (upstream_answer) */
    int status;
    struct evkeyvalq rhdrs;
    struct evbuffer *rbody;
};

struct uconn {
    upstream *u;
    int fd;
    enum conn_state state;
    upstream_op *op; /* CONNECTING, BUSY */
    bool from_idle;  /* taken from the idle stack: the upstream may have closed it meanwhile */
    bool got_bytes;  /* a byte of the current answer arrived */
    bool writing;    /* wev is added */
    struct event rev, wev;
    char *obuf; /* the request: head and body, osent of olen sent */
    size_t olen, osent, ocap;
    char *ibuf; /* received, not yet taken by the parser */
    size_t ilen, icap;
    upresp resp;       /* the answer being read (CONNECTING, BUSY) */
    double idle_since; /* IDLE: monotonic seconds when parked */
};

struct upstream {
    struct event_base *base;
    const char *name;      /* in log lines: "upstream", "tax" */
    char host[256];        /* as given */
    char hostport[300];    /* the Host of requests that carry none */
    struct sockaddr_in sa; /* resolved once at start: connecting never blocks */
    int port;
    char prefix[512];
    int timeout_ms;
    size_t max_body;
    int max_conns;
    int active; /* ops holding a connection */
    upstream_op *ops;
    /* A stack, the warmest on top, as deep as max_conns: after a burst of
     * N concurrent requests N connections stay, so the next burst reuses
     * them instead of connecting (and closing into TIME_WAIT) past a
     * smaller bound. main.c's descriptor budget counts them. */
    uconn **idle;
    int nidle;
    struct event sweep; /* pending while a connection is idle */
};

static const char *conn_state_name[] = {"connecting", "busy", "idle", "closed"};

/* ---- connections ---- */

static void on_conn_read(evutil_socket_t fd, short what, void *arg);
static void on_conn_write(evutil_socket_t fd, short what, void *arg);

/* The one place a connection changes state. Legal: CONNECTING -> BUSY
 * (connected), BUSY -> IDLE (answered, kept), IDLE -> BUSY (taken), and
 * any -> CLOSED (conn_close). */
static void conn_enter(uconn *c, enum conn_state to)
{
    bool legal = (c->state == CONN_CONNECTING && to == CONN_BUSY) ||
                 (c->state == CONN_BUSY && to == CONN_IDLE) ||
                 (c->state == CONN_IDLE && to == CONN_BUSY) ||
                 (c->state != CONN_CLOSED && to == CONN_CLOSED);
    if (!legal) {
        log_error("upstream: illegal connection transition %s -> %s", conn_state_name[c->state],
                  conn_state_name[to]);
        abort();
    }
    log_debug("upstream conn %d: %s -> %s", c->fd, conn_state_name[c->state], conn_state_name[to]);
    c->state = to;
}

static void conn_want_write(uconn *c, bool on)
{
    if (on == c->writing)
        return;
    if (on)
        event_add(&c->wev, NULL);
    else
        event_del(&c->wev);
    c->writing = on;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* A new connection, CONNECTING; its request is sent once connected. NULL
 * when no socket could be had or the connect failed at once. */
static uconn *conn_open(upstream *u)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)&u->sa, sizeof(u->sa)) < 0 && errno != EINPROGRESS) {
        close(fd);
        return NULL;
    }
    uconn *c = xcalloc(1, sizeof(*c));
    c->u = u;
    c->fd = fd;
    c->state = CONN_CONNECTING;
    upresp_init(&c->resp, false, 0, NULL);
    event_assign(&c->rev, u->base, fd, EV_READ | EV_PERSIST, on_conn_read, c);
    event_assign(&c->wev, u->base, fd, EV_WRITE | EV_PERSIST, on_conn_write, c);
    event_add(&c->rev, NULL);
    conn_want_write(c, true); /* writable: connected (or failed) */
    return c;
}

static void idle_remove(upstream *u, uconn *c)
{
    for (int i = 0; i < u->nidle; i++) {
        if (u->idle[i] == c) {
            memmove(&u->idle[i], &u->idle[i + 1], (size_t)(u->nidle - i - 1) * sizeof(u->idle[0]));
            u->nidle--;
            return;
        }
    }
}

/* From any state, the connection carrying no op (the op let go first):
 * off the idle stack, its events deleted, its socket closed, freed. */
static void conn_close(uconn *c)
{
    if (c->state == CONN_IDLE)
        idle_remove(c->u, c);
    conn_enter(c, CONN_CLOSED);
    event_del(&c->rev);
    event_del(&c->wev);
    close(c->fd);
    upresp_clear(&c->resp);
    free(c->ibuf);
    free(c->obuf);
    free(c);
}

/* Answered and fit to carry another request: onto the idle stack, its
 * buffers back to their usual size; closed when the stack is full. */
static void conn_park(uconn *c)
{
    upstream *u = c->u;
    if (u->nidle == u->max_conns) {
        conn_close(c);
        return;
    }
    upresp_clear(&c->resp);
    c->ilen = c->olen = c->osent = 0;
    if (c->icap > UPSTREAM_IBUF) {
        free(c->ibuf);
        c->ibuf = NULL;
        c->icap = 0;
    }
    if (c->ocap > 4 * UPSTREAM_OBUF) {
        free(c->obuf);
        c->obuf = NULL;
        c->ocap = 0;
    }
    conn_enter(c, CONN_IDLE);
    c->idle_since = now_s();
    u->idle[u->nidle++] = c;
    if (!evtimer_pending(&u->sweep, NULL)) {
        struct timeval tv = {1, 0};
        evtimer_add(&u->sweep, &tv);
    }
}

/* Every second while any is idle: closes those unused for
 * UPSTREAM_IDLE_S, the coldest first (the bottom of the stack). */
static void on_sweep(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    upstream *u = arg;
    double cutoff = now_s() - UPSTREAM_IDLE_S;
    while (u->nidle > 0 && u->idle[0]->idle_since <= cutoff)
        conn_close(u->idle[0]);
    if (u->nidle > 0) {
        struct timeval tv = {1, 0};
        evtimer_add(&u->sweep, &tv);
    }
}

/* Whether an idle connection is quiet: neither bytes nor the close came
 * on it since its answer. Its read event may not have run yet in this
 * turn of the loop (the client's request was read first in the same
 * turn), and what waits there would be read as the next request's
 * answer: a 204's or a HEAD's body sent anyway, late, poisoned every
 * answer after it on that connection, another client's included. The
 * read event's flags (active this turn or not) are no substitute: bytes
 * that came after this turn's epoll_wait, while the worker was
 * preempted, say, are there only to a look at the socket (the test of
 * this, under CPU load, failed every time with the flags). */
static bool conn_quiet(const uconn *c)
{
    char b;
    return recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) < 0 &&
           (errno == EAGAIN || errno == EWOULDBLOCK);
}

/* The warmest quiet idle connection, BUSY; the others on top of it are
 * closed. NULL when none is left. */
static uconn *conn_take(upstream *u)
{
    while (u->nidle > 0) {
        uconn *c = u->idle[u->nidle - 1];
        if (!conn_quiet(c)) {
            conn_close(c);
            continue;
        }
        u->nidle--;
        conn_enter(c, CONN_BUSY);
        c->from_idle = true;
        return c;
    }
    return NULL;
}

/* Sends what is left of the request, as much as the kernel takes now; the
 * write event waits for the rest. Returns 0, or -1 when the connection
 * broke. */
static int conn_flush(uconn *c)
{
    while (c->osent < c->olen) {
        ssize_t n = send(c->fd, c->obuf + c->osent, c->olen - c->osent, MSG_NOSIGNAL);
        if (n >= 0) {
            c->osent += (size_t)n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            conn_want_write(c, true);
            return 0;
        } else if (errno != EINTR) {
            return -1;
        }
    }
    conn_want_write(c, false);
    return 0;
}

/* ---- the request, written in one buffer ---- */

static char *out_reserve(uconn *c, size_t n)
{
    if (c->olen + n > c->ocap) {
        size_t cap = c->ocap ? c->ocap : UPSTREAM_OBUF;
        while (cap < c->olen + n)
            cap *= 2;
        c->obuf = xrealloc(c->obuf, cap);
        c->ocap = cap;
    }
    char *p = c->obuf + c->olen;
    c->olen += n;
    return p;
}

static void out_mem(uconn *c, const char *s, size_t n)
{
    memcpy(out_reserve(c, n), s, n);
}

static void out_str(uconn *c, const char *s)
{
    out_mem(c, s, strlen(s));
}

/* A field line (proxyhdr_put): values come from reqparse or from us,
 * never with a CR or LF. */
static void out_field(void *arg, const char *name, const char *value)
{
    uconn *c = arg;
    size_t nl = strlen(name), vl = strlen(value);
    char *p = out_reserve(c, nl + vl + 4);
    memcpy(p, name, nl);
    memcpy(p + nl, ": ", 2);
    memcpy(p + nl + 2, value, vl);
    memcpy(p + nl + 2 + vl, "\r\n", 2);
}

/* The request toward the upstream, into c's buffer in one pass: the
 * request line, the fields straight from the client's request (no list
 * built for them), then the body. */
static void write_request(upstream_op *op, uconn *c)
{
    upstream *u = op->u;
    struct evkeyvalq *in = op->client ? op->client->in : &op->own;
    c->olen = c->osent = 0;
    out_str(c, httphdr_method_name(op->method)); /* server.c forwards no other */
    out_mem(c, " ", 1);
    out_str(c, op->uri);
    out_mem(c, " HTTP/1.1\r\n", 11);
    proxyhdr_emit_end_to_end(in, proxyhdr_request_skip, out_field, c);
    if (!op->bare)
        proxyhdr_emit_forwarded(in, op->peer, "http", out_field, c);
    /* The id we answer and log with (accesslog.c: the client's when valid,
     * else made), so that the application's logs name the same request;
     * the client's own field was skipped above, valid or not. */
    const char *id = op->client ? evhttp_find_header(op->client->out, "X-Request-Id")
                                : (op->request_id[0] ? op->request_id : NULL);
    if (id != NULL)
        out_field(c, "X-Request-Id", id);
    /* Host is owed (RFC 9112 3.2): a client that listed it in Connection
     * had it skipped above, yet we key on it and send X-Forwarded-Host. */
    const char *host = evhttp_find_header(in, "Host");
    if (host == NULL)
        out_field(c, "Host", u->hostport);
    else if (proxyhdr_connection_lists(in, "Host"))
        out_field(c, "Host", host);
    /* Re-framed: whatever framing the client used (chunked included), the
     * upstream gets the body we hold with its exact length, and a request
     * that may carry a body says so when it has none. */
    size_t len = op->body ? evbuffer_get_length(op->body) : 0;
    if (len > 0 || op->method == EVHTTP_REQ_POST || op->method == EVHTTP_REQ_PUT ||
        op->method == EVHTTP_REQ_PATCH) {
        char n[24];
        snprintf(n, sizeof(n), "%zu", len);
        out_field(c, "Content-Length", n);
    }
    out_mem(c, "\r\n", 2);
    if (len > 0)
        evbuffer_copyout(op->body, out_reserve(c, len), len);
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
    hdrlist_clear(&op->rhdrs);
    hdrlist_clear(&op->own);
    if (op->body)
        evbuffer_free(op->body);
    evbuffer_free(op->rbody);
    free(op->uri);
    free(op);
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

/* Our error instead of an answer: nothing of the upstream's is kept. */
static void op_error(upstream_op *op, int status, const char *code, const char *msg)
{
    op->has_err = true;
    qc_error_set(&op->err, status, code, "%s", msg);
    evbuffer_drain(op->rbody, evbuffer_get_length(op->rbody));
}

/* op takes c: its request written, the reading of its answer begun. */
static void op_carry(upstream_op *op, uconn *c)
{
    op->conn = c;
    c->op = op;
    c->got_bytes = false;
    op->u->active++;
    upresp_init(&c->resp, op->method == EVHTTP_REQ_HEAD, op->u->max_body, op->rbody);
    write_request(op, c);
}

/* op lets go of its connection: kept for the next request (keep) or
 * closed, which aborts whatever it was doing. */
static void op_release_conn(upstream_op *op, bool keep)
{
    uconn *c = op->conn;
    op->conn = NULL;
    c->op = NULL;
    op->u->active--;
    if (keep)
        conn_park(c);
    else
        conn_close(c);
}

static bool idempotent(enum evhttp_cmd_type m)
{
    return m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD || m == EVHTTP_REQ_PUT ||
           m == EVHTTP_REQ_DELETE || m == EVHTTP_REQ_OPTIONS;
}

/* The upstream may have closed an idle keep-alive connection as we wrote
 * to it: once, on a fresh one, when nothing of an answer came back and
 * the method may be repeated. */
static bool may_retry(const upstream_op *op, const uconn *c)
{
    return c->from_idle && !c->got_bytes && !op->retried && idempotent(op->method);
}

/* Puts the op's request on a connection: an idle one, or a new one
 * (always when retrying: a retry must not meet another stale one).
 * Returns 0 (on its way), or -1 with the op's error set when none could
 * take it; the caller answers. */
static int op_send(upstream_op *op)
{
    upstream *u = op->u;
    for (;;) {
        if (u->active >= u->max_conns) {
            op_error(op, 503, "upstream_busy", "too many requests to the upstream in flight");
            return -1;
        }
        uconn *c = op->retried ? NULL : conn_take(u);
        if (c == NULL)
            c = conn_open(u);
        if (c == NULL) {
            op_error(op, 502, "upstream_unavailable", "cannot open a connection to the upstream");
            return -1;
        }
        op_carry(op, c);
        if (c->state == CONN_CONNECTING || conn_flush(c) == 0)
            return 0;
        bool retry = may_retry(op, c);
        op_release_conn(op, false);
        if (!retry) {
            op_error(op, 502, "upstream_unavailable", "cannot send to the upstream");
            return -1;
        }
        op->retried = true;
    }
}

/* The connection broke before the answer was whole (refused, reset,
 * closed): retried when it may be, else 502. */
static void op_failed(upstream_op *op)
{
    bool retry = may_retry(op, op->conn);
    op_release_conn(op, false);
    if (retry) {
        log_debug("upstream %s: a kept connection was gone, once more on a new one", op->uri);
        op->retried = true;
        if (op_send(op) == 0)
            return;
    } else {
        op_error(op, 502, "upstream_unavailable", "the upstream could not be reached or broke");
    }
    op_enter(op, OP_READY);
}

/* Takes the answer's fields from the parser (moved, not copied). */
static void take_answer(upstream_op *op, upresp *r)
{
    struct evkeyvalq *in = &r->fields;
    op->status = r->status;
    proxyhdr_move_end_to_end(in, &op->rhdrs, proxyhdr_response_skip);
    /* A HEAD or 304 has no body here: its Content-Length describes the
     * representation and goes through; other bodies are framed by us. */
    const char *cl = evhttp_find_header(in, "Content-Length");
    if (cl != NULL && (op->method == EVHTTP_REQ_HEAD || op->status == 304))
        hdrlist_add(&op->rhdrs, "Content-Length", cl);
    char via[4096], full[4200];
    if (proxyhdr_join(in, "Via", via, sizeof(via)) > 0) {
        snprintf(full, sizeof(full), "%s, %s", via, PROXYHDR_VIA);
        hdrlist_add(&op->rhdrs, "Via", full);
    } else {
        hdrlist_add(&op->rhdrs, "Via", PROXYHDR_VIA);
    }
}

/* The parser is done with the op's answer (r, not UPRESP_MORE); rest
 * bytes followed it; at_close: r is upresp_eof's. */
static void op_answered(upstream_op *op, upresp_result r, size_t rest, bool at_close)
{
    uconn *c = op->conn;
    /* The answer's own fault, not a connection that went: an owner that
     * tells the two apart (tax: 502 or 503) can. At the close, BROKEN is
     * an answer cut short. */
    op->unreadable = (r == UPRESP_BROKEN && !at_close) || (r == UPRESP_DONE && c->resp.coded);
    if (r == UPRESP_BROKEN && c->resp.bad_name) {
        /* Not passed on as it came (nginx refuses such an answer too):
         * ": x" or "X Bad: x" would be read differently downstream. */
        op_error(op, 502, "upstream_bad_field",
                 "the upstream sent a field name that is not a token");
    } else if (r == UPRESP_BROKEN) {
        char msg[160];
        snprintf(msg, sizeof(msg), "the upstream's answer is broken: %s", c->resp.why);
        op_error(op, 502, "upstream_unavailable", msg);
    } else if (r == UPRESP_TOO_LARGE) {
        op_error(op, 502, "upstream_too_large", "the upstream answer is larger than --max-body");
    } else if (c->resp.coded) {
        op_error(op, 502, "upstream_unavailable",
                 "the upstream's answer has a transfer coding other than chunked");
    } else {
        take_answer(op, &c->resp);
    }
    /* Kept only when nothing is amiss: an answer that came before the
     * whole request went, or bytes after it, leave the connection out of
     * step. */
    bool keep =
        r == UPRESP_DONE && !op->has_err && c->resp.reusable && rest == 0 && c->osent == c->olen;
    op_release_conn(op, keep);
    op_enter(op, OP_READY);
}

/* ---- socket callbacks ---- */

/* Readable: the answer, or the end of the connection. An idle connection
 * is readable only when the upstream closed it (or sent what nobody asked
 * for): it is closed. */
static void on_conn_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    uconn *c = arg;
    if (c->state == CONN_IDLE) {
        conn_close(c);
        return;
    }
    for (;;) {
        if (c->ilen == c->icap) {
            c->icap = c->icap ? 2 * c->icap : UPSTREAM_IBUF;
            c->ibuf = xrealloc(c->ibuf, c->icap);
        }
        size_t room = c->icap - c->ilen;
        ssize_t n = recv(fd, c->ibuf + c->ilen, room, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n < 0) {
            op_failed(c->op);
            return;
        }
        if (n == 0) {
            upresp_result r = upresp_eof(&c->resp);
            if (r == UPRESP_DONE || c->got_bytes)
                op_answered(c->op, r, 0, true);
            else
                op_failed(c->op);
            return;
        }
        c->got_bytes = true;
        c->ilen += (size_t)n;
        size_t used;
        upresp_result r = upresp_feed(&c->resp, c->ibuf, c->ilen, &used);
        if (r != UPRESP_MORE) {
            op_answered(c->op, r, c->ilen - used, false);
            return;
        }
        /* What is left is the start of a line (upresp.h): at most the
         * 64 KiB of a head, so the buffer stays bounded. */
        c->ilen -= used;
        memmove(c->ibuf, c->ibuf + used, c->ilen);
        if ((size_t)n < room)
            return; /* the kernel had no more; else read on */
    }
}

/* Writable: connected (or failed to), or room for the rest of a request. */
static void on_conn_write(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    uconn *c = arg;
    if (c->state == CONN_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err != 0) {
            op_failed(c->op);
            return;
        }
        conn_enter(c, CONN_BUSY);
    }
    if (conn_flush(c) < 0)
        op_failed(c->op);
}

/* ---- op events ---- */

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    upstream_op *op = arg;
    op_release_conn(op, false);
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
            log_warn("%s %s: %s", op->u->name, op->uri, op->err.message);
        upstream_answer a = {op->has_err ? &op->err : NULL, op->status,    &op->rhdrs, op->rbody,
                             seconds_since(&op->sent_at),   op->unreadable};
        op->cb(op->arg, &a);
    }
    op_free(op);
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
    size_t np = strlen(u->prefix), nr = strlen(root), nu = strlen(uri);
    char *t = xmalloc(np + nr + nu + 1);
    memcpy(t, u->prefix, np);
    memcpy(t + np, root, nr);
    memcpy(t + np + nr, uri, nu + 1);
    return t;
}

/* What of the client's request does not stay with it: the body (drained
 * into ours, once) and the peer (its connection may go before a retry). */
static void keep_client(upstream_op *op, http_req *req)
{
    op->client = req;
    snprintf(op->peer, sizeof(op->peer), "%s", req->peer);
    struct evbuffer *in = req->body;
    if (evbuffer_get_length(in) > 0) {
        op->body = evbuffer_new();
        evbuffer_add_buffer(op->body, in);
    }
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

upstream_op *upstream_forward(upstream *u, http_req *req, upstream_cb *cb, void *arg)
{
    upstream_op *op = op_new(u, req->method, req->target, cb, arg);
    keep_client(op, req);
    return op_start(op);
}

upstream_op *upstream_get(upstream *u, const char *target, upstream_cb *cb, void *arg)
{
    upstream_op *op = op_new(u, EVHTTP_REQ_GET, target, cb, arg);
    op->bare = true;
    return op_start(op);
}

upstream_op *upstream_fetch(upstream *u, const char *target, const struct evkeyvalq *headers,
                            const char *peer, const char *request_id, upstream_cb *cb, void *arg)
{
    upstream_op *op = op_new(u, EVHTTP_REQ_GET, target, cb, arg);
    hdrlist_copy(&op->own, headers);
    snprintf(op->peer, sizeof(op->peer), "%s", peer ? peer : "unknown");
    snprintf(op->request_id, sizeof(op->request_id), "%s", request_id ? request_id : "");
    return op_start(op);
}

void upstream_cancel(upstream_op *op)
{
    if (op->state == OP_SENT)
        op_release_conn(op, false);
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
static int resolve(const char *host, int port, struct sockaddr_in *sa)
{
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || res == NULL)
        return -1;
    memcpy(sa, res->ai_addr, sizeof(*sa));
    sa->sin_port = htons((uint16_t)port);
    freeaddrinfo(res);
    return 0;
}

upstream *upstream_new(struct event_base *base, const char *name, const char *url, int timeout_ms,
                       size_t max_body, int max_conns, char *err, size_t errlen)
{
    upstream *u = xcalloc(1, sizeof(*u));
    if (upstream_parse_url(url, u->host, sizeof(u->host), &u->port, u->prefix, sizeof(u->prefix)) <
        0) {
        snprintf(err, errlen, "expected http://HOST[:PORT][/PREFIX], got '%.100s'", url);
        free(u);
        return NULL;
    }
    if (resolve(u->host, u->port, &u->sa) < 0) {
        snprintf(err, errlen, "cannot resolve '%.100s'", u->host);
        free(u);
        return NULL;
    }
    snprintf(u->hostport, sizeof(u->hostport), "%s:%d", u->host, u->port);
    u->base = base;
    u->name = name;
    u->timeout_ms = timeout_ms;
    u->max_body = max_body;
    u->max_conns = max_conns > 0 ? max_conns : 1;
    u->idle = xcalloc((size_t)u->max_conns, sizeof(*u->idle));
    evtimer_assign(&u->sweep, base, on_sweep, u);
    return u;
}

void upstream_free(upstream *u)
{
    if (u == NULL)
        return;
    while (u->ops != NULL) {
        upstream_op *op = u->ops;
        if (op->state == OP_SENT) {
            op_release_conn(op, false);
            op_error(op, 503, "shutting_down", "the proxy is shutting down");
            op->state = OP_READY;
        }
        if (op->state == OP_READY) {
            upstream_answer a = {op->has_err ? &op->err : NULL,
                                 op->status,
                                 &op->rhdrs,
                                 op->rbody,
                                 0,
                                 op->unreadable};
            op->cb(op->arg, &a);
        }
        op_free(op);
    }
    while (u->nidle > 0)
        conn_close(u->idle[u->nidle - 1]);
    event_del(&u->sweep);
    free(u->idle);
    free(u);
}
