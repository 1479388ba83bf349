/* httpconn: owns the listener, every client connection it accepted (its
 * socket, buffers, parser and the one request it carries) and the timers
 * of their states. See httpconn.h.
 *
 * A connection's life (one transition function, conn_enter):
 *
 *   READING --request whole--> BUSY --answered--> IDLE (or READING: bytes wait)
 *   IDLE --a byte--> READING
 *   BUSY --answered, closing--> LINGER --client's EOF or its deadline--> closed
 *   BUSY --answered, not all sent--> WRITING --all sent--> IDLE or LINGER
 *   WRITING, IDLE --the client took bytes--> the same (its deadline again)
 *   any --EOF, error, deadline--> closed (a BUSY request is reported gone)
 *
 * A request is handled from inside conn_process (the handler may answer
 * at once, and the next pipelined request is then read in the same loop)
 * or later (the answer resumes reading what waited). The connection is
 * freed only from the outermost of those calls (depth 0), and never while
 * a handler still owns its request. */
#include "quotecache/httpconn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/sockios.h> /* SIOCOUTQ */
#endif

#include "quotecache/hdrlist.h"
#include "quotecache/httphdr.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"
#include "quotecache/strbuf.h"

#define IBUF_MIN 4096
#define IBUF_WAIT_MAX (64 * 1024) /* buffered past a request being handled: then reading pauses */
#define LINGER_MS 1000
#define BACKOFF_MS 250
#define PEER_MAX 64

enum conn_state {
    C_READING, /* a request is arriving: header_ms from its start */
    C_BUSY,    /* the handler has it: busy_ms backstop */
    C_WRITING, /* answered, not all sent: idle_ms from the last bytes the client took */
    C_IDLE,    /* answered, no byte of the next one: idle_ms */
    C_LINGER,  /* answered, closing: reading what the client still sends */
    C_CLOSED,  /* the socket is closed; freed at depth 0 once nobody owns the request */
};

static const char *const conn_state_name[] = {"reading", "busy",   "writing",
                                              "idle",    "linger", "closed"};

enum listen_state {
    L_ACCEPTING,
    L_FULL,    /* max_conns reached: disabled until one closes */
    L_BACKOFF, /* accept() failed (EMFILE...): disabled for BACKOFF_MS */
    L_STOPPED, /* the listening socket is closed */
};

struct http_conn {
    http_conn *next, *prev;
    http_listener *l;
    int fd;
    enum conn_state state;
    struct event rd, wr, timer;
    bool reading; /* rd is added */
    char *ibuf;   /* bytes read: [istart, ilen) not yet parsed */
    size_t istart, ilen, icap;
    char *obuf; /* the answers: [osent, olen) not yet sent */
    size_t osent, olen, ocap;
    reqparse p;
    bool parsing;   /* p holds a request being read (or handled) */
    bool continued; /* the 100 Continue of this request is sent */
    bool owned;     /* the handler has req: not freed before it answers */
    bool closing;   /* the answer in obuf is the last */
    int outq;       /* WRITING, IDLE: the kernel's unsent bytes when the deadline was armed,
                       OUTQ_UNLOOKED if not asked */
    size_t qbound;  /* at least the kernel's unsent bytes: the last look plus all sent since */
    int depth;      /* conn_process / handler calls on the stack */
    http_gone_cb *gone;
    void *gone_arg;
    struct evbuffer *body;
    struct evkeyvalq out;
    http_req req;
    char peer[PEER_MAX];
};

struct http_listener {
    struct event_base *base;
    struct evconnlistener *lev;
    enum listen_state lstate;
    http_listen_opts o;
    http_handler *handler;
    void *arg;
    http_conn *all;
    size_t count;
    size_t writing; /* connections in WRITING */
    struct event *backoff;
    bool draining;
    bool warned_full, warned_error;
    char date[40]; /* the Date value of second date_sec */
    time_t date_sec;
};

static void conn_process(http_conn *c);
static void written(http_conn *c);
static void conn_enter(http_conn *c, enum conn_state to);

/* ---- the listener ---- */

/* The one place a listener changes state. */
static void listen_set(http_listener *l, enum listen_state to)
{
    if (l->lstate == to || l->lstate == L_STOPPED)
        return;
    if (to == L_ACCEPTING)
        evconnlistener_enable(l->lev);
    else if (l->lstate == L_ACCEPTING && to != L_STOPPED)
        evconnlistener_disable(l->lev);
    if (to == L_STOPPED) {
        evconnlistener_free(l->lev); /* closes the socket */
        l->lev = NULL;
        evtimer_del(l->backoff);
    }
    log_debug("httpconn: listener %d -> %d (%zu connections)", (int)l->lstate, (int)to, l->count);
    l->lstate = to;
}

static void on_backoff(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_listener *l = arg;
    if (l->lstate == L_BACKOFF)
        listen_set(l, l->count < l->o.max_conns ? L_ACCEPTING : L_FULL);
}

/* accept() failed with something other than EAGAIN/EINTR/ECONNABORTED:
 * the socket stays readable, so pause instead of spinning on it. */
static void on_accept_error(struct evconnlistener *lev, void *arg)
{
    (void)lev;
    http_listener *l = arg;
    int err = errno;
    if (!l->warned_error)
        log_warn("httpconn: accept: %s (%zu connections open); pausing accepts", strerror(err),
                 l->count);
    l->warned_error = true;
    metrics_inc(M_CONNS_REJECTED);
    listen_set(l, L_BACKOFF);
    struct timeval tv = {0, BACKOFF_MS * 1000};
    evtimer_add(l->backoff, &tv);
}

/* The Date value of this second, formatted once per second. The second is
 * read from the clock (a vDSO call): the loop's cached time lags a step
 * of the wall clock by up to 5 s. */
static const char *date_now(http_listener *l)
{
    time_t t = time(NULL);
    if (t != l->date_sec || l->date[0] == '\0') {
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(l->date, sizeof(l->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        l->date_sec = t;
    }
    return l->date;
}

/* ---- buffers and the socket ---- */

static void ibuf_room(http_conn *c)
{
    if (c->istart > 0) { /* what was parsed goes: the rest to the front */
        memmove(c->ibuf, c->ibuf + c->istart, c->ilen - c->istart);
        c->ilen -= c->istart;
        c->istart = 0;
    }
    if (c->ilen == c->icap) {
        c->icap = c->icap ? 2 * c->icap : IBUF_MIN;
        c->ibuf = xrealloc(c->ibuf, c->icap);
    }
}

static char *out_reserve(http_conn *c, size_t n)
{
    if (c->osent > 0 && c->osent == c->olen)
        c->osent = c->olen = 0;
    if (c->olen + n > c->ocap) {
        while (c->olen + n > c->ocap)
            c->ocap = c->ocap ? 2 * c->ocap : 4096;
        c->obuf = xrealloc(c->obuf, c->ocap);
    }
    char *p = c->obuf + c->olen;
    c->olen += n;
    return p;
}

static void out_mem(http_conn *c, const char *s, size_t n)
{
    if (n > 0)
        memcpy(out_reserve(c, n), s, n);
}

static void out_str(http_conn *c, const char *s)
{
    out_mem(c, s, strlen(s));
}

static void out_field(http_conn *c, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    char *p = out_reserve(c, nl + vl + 4);
    memcpy(p, name, nl);
    memcpy(p + nl, ": ", 2);
    memcpy(p + nl + 2, value, vl);
    memcpy(p + nl + 2 + vl, "\r\n", 2);
}

static void read_pause(http_conn *c, bool pause)
{
    if (pause == !c->reading || c->fd < 0)
        return;
    if (pause)
        event_del(&c->rd);
    else
        event_add(&c->rd, NULL);
    c->reading = !pause;
}

/* Sends what is pending. Returns 0 when all of it went, 1 when the rest
 * waits for EV_WRITE, -1 when the client is gone (the connection is
 * closed). */
static int conn_flush(http_conn *c)
{
    while (c->osent < c->olen) {
        ssize_t n = send(c->fd, c->obuf + c->osent, c->olen - c->osent, MSG_NOSIGNAL);
        if (n > 0) {
            c->osent += (size_t)n;
            c->qbound += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            event_add(&c->wr, NULL);
            return 1;
        }
        conn_enter(c, C_CLOSED);
        return -1;
    }
    c->osent = c->olen = 0;
    return 0;
}

/* ---- connection life ---- */

static void conn_free(http_conn *c)
{
    http_listener *l = c->l;
    if (c->prev)
        c->prev->next = c->next;
    else
        l->all = c->next;
    if (c->next)
        c->next->prev = c->prev;
    l->count--;
    metrics_gauge_add(G_CONNECTIONS, -1);
    if (c->parsing)
        reqparse_clear(&c->p);
    hdrlist_clear(&c->out);
    evbuffer_free(c->body);
    free(c->ibuf);
    free(c->obuf);
    free(c);
    if (l->lstate == L_FULL && l->count < l->o.max_conns)
        listen_set(l, L_ACCEPTING);
}

/* Frees c if nothing holds it any more. */
static void conn_release(http_conn *c)
{
    if (c->state == C_CLOSED && c->depth == 0 && !c->owned)
        conn_free(c);
}

/* The bytes the client has not taken yet of what we sent (the kernel's
 * send queue); -1 where unknown. */
static int kernel_queued(const http_conn *c)
{
#ifdef SIOCOUTQ
    int n;
    if (ioctl(c->fd, SIOCOUTQ, &n) == 0)
        return n;
#endif
    return -1;
}

/* Under this qbound, an idle connection's deadline is armed without a
 * look at the kernel's queue. */
#define WATCH_QUEUE_MIN 65536

/* outq when the look was skipped: the deadline looks instead. */
#define OUTQ_UNLOOKED INT_MAX

/* The kernel's queue as the deadline is armed, to tell at the deadline
 * whether the client took bytes meanwhile. Asked of the kernel (an ioctl)
 * only when qbound says it may hold WATCH_QUEUE_MIN: after small answers
 * sent at once, most requests go without the system call, and the
 * deadline's own look tells whether the client has taken them all. */
static void queue_look(http_conn *c, bool always)
{
    if (!always && c->qbound < WATCH_QUEUE_MIN) {
        c->outq = OUTQ_UNLOOKED;
        return;
    }
    c->outq = kernel_queued(c);
    c->qbound = c->outq >= 0 ? (size_t)c->outq : SIZE_MAX / 2; /* unknown: asked again */
}

static int state_ms(const http_conn *c, enum conn_state s)
{
    const http_listen_opts *o = &c->l->o;
    return s == C_READING                  ? o->header_ms
           : s == C_BUSY                   ? o->busy_ms
           : s == C_IDLE || s == C_WRITING ? o->idle_ms
                                           : LINGER_MS;
}

/* The one place a connection changes state; each state has one deadline,
 * armed here. */
static void conn_enter(http_conn *c, enum conn_state to)
{
    enum conn_state from = c->state;
    bool legal = (from == C_READING && to == C_BUSY) ||
                 (from == C_BUSY && (to == C_IDLE || to == C_LINGER || to == C_WRITING)) ||
                 (from == C_WRITING &&
                  (to == C_WRITING || to == C_IDLE || to == C_LINGER)) || /* progress, all sent */
                 (from == C_IDLE && (to == C_READING || to == C_IDLE)) ||
                 (from != C_CLOSED && to == C_CLOSED) ||
                 (from == C_READING && to == C_READING); /* at accept: its deadline armed */
    if (!legal) {
        log_error("httpconn: illegal connection transition %s -> %s", conn_state_name[from],
                  conn_state_name[to]);
        abort();
    }
    log_debug("httpconn %d: %s -> %s", c->fd, conn_state_name[from], conn_state_name[to]);
    c->state = to;
    if (from == C_WRITING && to != C_WRITING)
        c->l->writing--;
    else if (to == C_WRITING && from != C_WRITING)
        c->l->writing++;
    if (to == C_CLOSED) {
        event_del(&c->rd);
        event_del(&c->wr);
        evtimer_del(&c->timer);
        close(c->fd);
        c->fd = -1;
        c->reading = false;
        return;
    }
    if (to == C_WRITING || to == C_IDLE)
        queue_look(c, to == C_WRITING);
    int ms = state_ms(c, to);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(&c->timer, &tv);
}

/* The client left (EOF, an error, a deadline) while the handler has its
 * request: the owner is told, and the request is gone; without a
 * callback the request stays until it is answered. */
static void conn_lost(http_conn *c)
{
    bool busy = c->state == C_BUSY;
    conn_enter(c, C_CLOSED);
    if (busy && c->gone != NULL) {
        http_gone_cb *cb = c->gone;
        c->gone = NULL;
        c->owned = false;
        c->depth++;
        cb(c->gone_arg);
        c->depth--;
    }
    conn_release(c);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_conn *c = arg;
    if (c->state == C_WRITING || c->state == C_IDLE) {
        /* The kernel's buffer (megabytes) may hold what we wrote for long
         * after the client began taking it: a client still reading its
         * answer is no idle one. */
        int q = kernel_queued(c);
        bool unlooked = c->outq == OUTQ_UNLOOKED;
        if (q >= 0 && (unlooked ? q > 0 : q < c->outq)) {
            /* Unlooked, bytes still unsent: closing now would have the
             * client's next bytes reset the connection and drop them. One
             * more period, watched from this look (nothing sent since). */
            c->qbound = (size_t)q;
            conn_enter(c, c->state);
            if (c->outq == OUTQ_UNLOOKED)
                c->outq = q;
            return;
        }
    }
    if (c->state == C_BUSY)
        log_warn("httpconn: a request still unanswered after %d ms: connection closed",
                 c->l->o.busy_ms);
    conn_lost(c);
}

static void on_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_conn *c = arg;
    size_t before = c->osent;
    int r = conn_flush(c);
    if (r < 0) {
        conn_release(c);
        return;
    }
    if (r > 0) {
        /* A slow reader keeps its connection as long as it takes bytes:
         * the deadline counts from the last ones. */
        if (c->state == C_WRITING && c->osent > before)
            conn_enter(c, C_WRITING);
        return;
    }
    event_del(&c->wr);
    if (c->state == C_WRITING)
        written(c);
    else
        read_pause(c, false); /* READING: its 100 Continue went */
    conn_process(c);          /* pipelined requests waited for the backlog */
}

static void on_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    http_conn *c = arg;
    if (c->state == C_LINGER) { /* the client's last bytes: dropped */
        char sink[4096];
        ssize_t n = recv(fd, sink, sizeof(sink), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
            conn_lost(c);
        return;
    }
    ibuf_room(c);
    ssize_t n = recv(fd, c->ibuf + c->ilen, c->icap - c->ilen, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        return;
    if (n == 0 && c->state == C_WRITING) {
        /* Nothing more from the client, but it may still read the answer
         * it has: that goes, then the close. */
        c->closing = true;
        read_pause(c, true);
        return;
    }
    if (n <= 0) { /* EOF or an error: a half-close counts as gone, as in nginx */
        conn_lost(c);
        return;
    }
    c->ilen += (size_t)n;
    if (c->state == C_BUSY || c->osent < c->olen) {
        /* The next request waits for this one's answer, and for the
         * client to take what was sent it; past a bound, so does reading
         * (a client that pipelines and never reads is held by the
         * kernel's buffers, not ours). */
        if (c->ilen - c->istart >= IBUF_WAIT_MAX)
            read_pause(c, true);
        return;
    }
    conn_process(c);
}

/* ---- answers ---- */

static const char *reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 206:
        return "Partial Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

/* Whether the connection carries nothing after this answer. */
static bool answer_closes(http_conn *c, const struct evkeyvalq *out)
{
    if (!c->p.keep_alive || c->req.err_close || c->l->draining)
        return true;
    for (const struct evkeyval *kv = out->tqh_first; kv; kv = kv->next.tqe_next) {
        if (httphdr_name_is(kv->key, "Connection") && strcasecmp(kv->value, "close") == 0)
            return true;
    }
    return false;
}

/* Renders the answer into obuf: status line, the fields (Connection ones
 * replaced by ours), Date and Content-Length when absent, the body. */
static void render(http_conn *c, int status, struct evbuffer *ebody, const char *mbody, size_t len)
{
    bool head = c->req.method == EVHTTP_REQ_HEAD;
    bool bodiless = status < 200 || status == 204 || status == 304;
    bool has_date = false, has_length = false;
    char line[32];
    strbuf sl = strbuf_on(line, sizeof(line));
    strbuf_mem(&sl, "HTTP/1.1 ", 9);
    strbuf_i64(&sl, status);
    strbuf_mem(&sl, " ", 1);
    out_mem(c, line, sl.len);
    out_str(c, reason(status));
    out_mem(c, "\r\n", 2);
    for (const struct evkeyval *kv = c->out.tqh_first; kv; kv = kv->next.tqe_next) {
        switch (kv->key[0]) {
        case 'C':
        case 'c':
            if (strcasecmp(kv->key, "Connection") == 0)
                continue; /* ours below */
            if (strcasecmp(kv->key, "Content-Length") == 0) {
                if (bodiless)
                    continue;
                has_length = true;
            }
            break;
        case 'D':
        case 'd':
            has_date = has_date || strcasecmp(kv->key, "Date") == 0;
            break;
        default:
            break;
        }
        out_field(c, kv->key, kv->value);
    }
    if (!has_date)
        out_field(c, "Date", date_now(c->l));
    if (!bodiless && !has_length && (!head || ebody != NULL || mbody != NULL)) {
        char n[24];
        strbuf nb = strbuf_on(n, sizeof(n));
        strbuf_i64(&nb, (int64_t)len);
        n[nb.len] = '\0';
        out_field(c, "Content-Length", n);
    }
    if (c->closing)
        out_mem(c, "Connection: close\r\n", 19);
    else if (c->req.minor == 0)
        out_mem(c, "Connection: keep-alive\r\n", 24);
    out_mem(c, "\r\n", 2);
    c->req.bytes = 0;
    if (bodiless || head || len == 0)
        return;
    if (ebody != NULL)
        evbuffer_remove(ebody, out_reserve(c, len), len);
    else
        out_mem(c, mbody, len);
    c->req.bytes = len;
}

/* The answer is all sent: the next request, or the close. */
static void written(http_conn *c)
{
    if (c->closing) {
        conn_enter(c, C_LINGER);
        shutdown(c->fd, SHUT_WR);
    } else {
        conn_enter(c, C_IDLE);
    }
    read_pause(c, false);
}

/* After the answer: the next request, or the close, once it is sent. */
static void answered(http_conn *c)
{
    hdrlist_clear(&c->out);
    evbuffer_drain(c->body, evbuffer_get_length(c->body));
    reqparse_clear(&c->p);
    c->parsing = false;
    c->continued = false;
    c->gone = NULL;
    memset(&c->req, 0, sizeof(c->req));
    if (c->state == C_CLOSED) /* the client left before its answer */
        return;
    int r = conn_flush(c);
    if (r > 0)
        conn_enter(c, C_WRITING);
    else if (r == 0)
        written(c);
}

static void send_answer(http_req *req, int status, struct evbuffer *ebody, const char *mbody,
                        size_t len)
{
    http_conn *c = req->conn;
    c->owned = false;
    req->status = status;
    if (c->state != C_CLOSED) {
        c->closing = answer_closes(c, &c->out);
        render(c, status, ebody, mbody, len);
    }
    if (req->on_sent != NULL && c->state != C_CLOSED) /* no line for a client that left */
        req->on_sent(req, req->sent_arg);
    c->depth++;
    answered(c);
    c->depth--;
    if (c->depth == 0 && c->state == C_IDLE)
        conn_process(c); /* an answer given later: the bytes that waited */
    else
        conn_release(c);
}

void http_send(http_req *req, int status, struct evbuffer *body)
{
    send_answer(req, status, body, NULL, body ? evbuffer_get_length(body) : 0);
}

void http_send_mem(http_req *req, int status, const char *body, size_t len)
{
    send_answer(req, status, NULL, body, len);
}

void http_req_on_gone(http_req *req, http_gone_cb *cb, void *arg)
{
    req->conn->gone = cb;
    req->conn->gone_arg = arg;
}

/* ---- requests ---- */

/* A refusal before any request line: no request to route, our own 400. */
static void refuse_unnamed(http_conn *c)
{
    char body[256];
    strbuf b = strbuf_on(body, sizeof(body));
    strbuf_str(&b, "{\"error\":\"");
    strbuf_str(&b, c->p.err_code);
    strbuf_str(&b, "\",\"message\":\"");
    strbuf_str(&b, c->p.err_message);
    strbuf_str(&b, "\"}");
    c->req.conn = c;
    c->req.err_close = true;
    c->owned = true;
    hdrlist_add(&c->out, "Content-Type", "application/json");
    conn_enter(c, C_BUSY);
    http_send_mem(&c->req, c->p.err_status, body, b.len);
}

static void dispatch(http_conn *c)
{
    reqparse *p = &c->p;
    http_req *r = &c->req;
    memset(r, 0, sizeof(*r));
    r->method = p->method;
    r->minor = p->minor;
    r->target = p->target;
    r->in = &p->fields;
    r->body = c->body;
    r->peer = c->peer;
    r->err_status = p->err_status;
    r->err_code = p->err_code;
    r->err_message = p->err_message;
    r->err_close = p->result == REQPARSE_BAD;
    r->out = &c->out;
    r->conn = c;
    c->owned = true;
    conn_enter(c, C_BUSY);
    c->l->handler(c->l->arg, r);
}

/* Reads every request that waits, one at a time: stops at one being
 * handled, at an answer not yet sent, or at bytes that are no request
 * yet. */
static void conn_process(http_conn *c)
{
    c->depth++;
    while ((c->state == C_READING || c->state == C_IDLE) && c->osent == c->olen &&
           c->istart < c->ilen) {
        if (!c->parsing) {
            reqparse_init(&c->p, &c->l->o.lim, c->body);
            c->parsing = true;
        }
        size_t used = 0;
        reqparse_result r = reqparse_feed(&c->p, c->ibuf + c->istart, c->ilen - c->istart, &used);
        c->istart += used;
        if (c->state == C_IDLE && reqparse_started(&c->p))
            conn_enter(c, C_READING); /* the whole request within header_ms from here */
        if (r == REQPARSE_MORE) {
            if (c->p.head_done && c->p.expect_continue && !c->continued) {
                c->continued = true;
                out_str(c, "HTTP/1.1 100 Continue\r\n\r\n");
                conn_flush(c);
            }
            break;
        }
        if (c->p.target == NULL)
            refuse_unnamed(c);
        else
            dispatch(c);
    }
    c->depth--;
    conn_release(c);
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
                      int socklen, void *arg)
{
    (void)lev;
    (void)socklen;
    http_listener *l = arg;
    http_conn *c = xcalloc(1, sizeof(*c));
    c->l = l;
    c->fd = fd;
    c->state = C_READING;
    TAILQ_INIT(&c->out);
    c->body = evbuffer_new();
    const void *addr = sa->sa_family == AF_INET6
                           ? (const void *)&((struct sockaddr_in6 *)sa)->sin6_addr
                           : (const void *)&((struct sockaddr_in *)sa)->sin_addr;
    if (inet_ntop(sa->sa_family, addr, c->peer, sizeof(c->peer)) == NULL)
        snprintf(c->peer, sizeof(c->peer), "unknown");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    event_assign(&c->rd, l->base, fd, EV_READ | EV_PERSIST, on_readable, c);
    event_assign(&c->wr, l->base, fd, EV_WRITE | EV_PERSIST, on_writable, c);
    evtimer_assign(&c->timer, l->base, on_timer, c);
    c->next = l->all;
    if (l->all)
        l->all->prev = c;
    l->all = c;
    l->count++;
    metrics_gauge_add(G_CONNECTIONS, 1);
    conn_enter(c, C_READING);
    read_pause(c, false);
    if (l->count >= l->o.max_conns && l->lstate == L_ACCEPTING) {
        if (!l->warned_full)
            log_warn("httpconn: %zu connections open: accepting no more until one closes",
                     l->count);
        l->warned_full = true;
        metrics_inc(M_CONNS_REJECTED);
        listen_set(l, L_FULL);
    }
}

/* ---- the listener's life ---- */

http_listener *http_listener_new(struct event_base *base, int fd, const http_listen_opts *o,
                                 http_handler *handler, void *arg)
{
    evutil_make_socket_nonblocking(fd);
    http_listener *l = xcalloc(1, sizeof(*l));
    l->base = base;
    l->o = *o;
    l->handler = handler;
    l->arg = arg;
    /* Backlog 0: the socket is listening already (listener.c, 1024);
     * libevent's -1 would listen() again with 128, and a burst of
     * connections past that loses SYNs (a second each to retry). */
    l->lev = evconnlistener_new(base, on_accept, l,
                                LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE,
                                0, fd);
    if (l->lev == NULL) {
        close(fd);
        free(l);
        return NULL;
    }
    evconnlistener_set_error_cb(l->lev, on_accept_error);
    l->backoff = evtimer_new(base, on_backoff, l);
    l->lstate = L_ACCEPTING;
    return l;
}

void http_listener_stop(http_listener *l)
{
    if (l == NULL)
        return;
    /* Idle connections are not closed here: a keep-alive client may be
     * sending its next request on one right now, and would lose it. Its
     * answer closes the connection instead, so the client moves to
     * another worker without losing a request. */
    listen_set(l, L_STOPPED);
    l->draining = true;
}

size_t http_listener_connections(const http_listener *l)
{
    return l ? l->count : 0;
}

size_t http_listener_unsent(const http_listener *l)
{
    return l ? l->writing : 0;
}

void http_listener_free(http_listener *l)
{
    if (l == NULL)
        return;
    listen_set(l, L_STOPPED);
    http_conn *c;
    while ((c = l->all) != NULL) {
        /* Owned without a callback: its owner was freed first (main.c). */
        bool orphan = c->owned && c->gone == NULL;
        if (c->state != C_CLOSED)
            conn_lost(c); /* frees it, unless orphan */
        if (orphan) {
            c->owned = false;
            c->depth = 0;
            conn_free(c);
        }
    }
    event_free(l->backoff);
    free(l);
}
