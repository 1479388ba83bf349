/* tax: owns the connections to the tax service and every call in flight.
 *
 * A call's life: PENDING (request sent) -> DONE (answer parsed, user
 * callback queued on a zero-delay event so it never runs inside evhttp or
 * inside tax_request) -> freed after the callback. If the deadline passes
 * first, the user is answered 504 and the call becomes ORPHAN: evhttp still
 * owns the request, so the op waits for evhttp's callback (bounded by the
 * connection timeout) and only then frees itself. Connections are never
 * freed inside their own callbacks: they go to a graveyard reaped from the
 * loop. */
#include "quotecache/tax.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/graveyard.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"

#define TAX_MAX_BODY 4096

enum op_state { OP_PENDING, OP_DONE, OP_ORPHAN };

typedef struct tax_op {
    struct tax_op *next, *prev; /* all live ops, for shutdown */
    tax_client *t;
    enum op_state state;
    struct evhttp_connection *conn;
    struct event *deadline;
    struct event *fire;
    tax_cb *cb;
    void *arg;
    int64_t tax_cents;
    qc_error err;
    bool failed;
} tax_op;

typedef struct conn_node {
    struct conn_node *next;
    struct evhttp_connection *conn;
} conn_node;

struct tax_client {
    struct event_base *base;
    char host[256];
    int port;
    char prefix[256];
    int timeout_ms;
    int max_conns;
    int active;
    tax_op *ops;
    conn_node *idle;
    int nidle;
    graveyard *graveyard; /* connections freed from the loop */
    int state;            /* -1 unknown, 0 down, 1 up */
};

static void conn_list_free(conn_node *n)
{
    while (n) {
        conn_node *next = n->next;
        evhttp_connection_free(n->conn);
        free(n);
        n = next;
    }
}

/* A connection that answered well stays open for the next call. The idle
 * set is bounded by the in-flight bound (whose descriptors main.c's
 * RLIMIT_NOFILE budget already counts), not by a smaller constant: after a
 * burst of N concurrent calls N connections stay open, so a miss-path load
 * of that size reuses them instead of connecting (and closing, into
 * TIME_WAIT) for every call past the constant. */
static void conn_release(tax_client *t, struct evhttp_connection *conn, bool reusable)
{
    if (!reusable || t->nidle >= t->max_conns) {
        graveyard_bury(t->graveyard, conn);
        return;
    }
    conn_node *n = xmalloc(sizeof(*n));
    n->conn = conn;
    n->next = t->idle;
    t->idle = n;
    t->nidle++;
}

static struct evhttp_connection *conn_get(tax_client *t)
{
    if (t->idle != NULL) {
        conn_node *n = t->idle;
        struct evhttp_connection *c = n->conn;
        t->idle = n->next;
        t->nidle--;
        free(n);
        return c;
    }
    struct evhttp_connection *c =
        evhttp_connection_base_new(t->base, NULL, t->host, (unsigned short)t->port);
    if (c == NULL)
        return NULL;
    evhttp_connection_set_retries(c, 0);
    /* evhttp's own timeout bounds how long an orphaned call can linger. */
    evhttp_connection_set_timeout(c, t->timeout_ms / 1000 + 2);
    evhttp_connection_set_max_body_size(c, TAX_MAX_BODY);
    return c;
}

static void op_unlink(tax_op *op)
{
    tax_client *t = op->t;
    if (op->prev)
        op->prev->next = op->next;
    else
        t->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    t->active--;
}

static void op_free(tax_op *op)
{
    op_unlink(op);
    event_free(op->deadline);
    event_free(op->fire);
    free(op);
}

static void op_fail(tax_op *op, int status, const char *code, const char *msg)
{
    op->failed = true;
    qc_error_set(&op->err, status, code, "%s", msg);
}

static bool only_space(const char *p, const char *end)
{
    for (; p != NULL && p < end; p++)
        if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
            return false;
    return p != NULL;
}

static int count_named(const cJSON *obj, const char *name)
{
    int n = 0;
    for (const cJSON *it = obj->child; it != NULL; it = it->next)
        n += it->string != NULL && strcmp(it->string, name) == 0;
    return n;
}

int tax_parse_answer(const char *text, size_t len, int64_t *out)
{
    if (text == NULL || len == 0 || len > TAX_MAX_BODY)
        return -1;
    const char *end = NULL;
    cJSON *doc = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (doc == NULL)
        return -1;
    const cJSON *tax = cJSON_GetObjectItemCaseSensitive(doc, "tax_cents");
    int rc = -1;
    /* One object and nothing after it, one tax_cents in it: two answers run
     * together, or a second tax_cents, name no one amount to trust. */
    if (cJSON_IsObject(doc) && cJSON_IsNumber(tax) && only_space(end, text + len) &&
        count_named(doc, "tax_cents") == 1) {
        double v = tax->valuedouble;
        if (v >= 0 && v <= 9007199254740992.0 && floor(v) == v) {
            *out = (int64_t)v;
            rc = 0;
        }
    }
    cJSON_Delete(doc);
    return rc;
}

static int parse_answer(struct evbuffer *body, int64_t *out)
{
    size_t len = evbuffer_get_length(body);
    if (len == 0 || len > TAX_MAX_BODY)
        return -1;
    return tax_parse_answer((const char *)evbuffer_pullup(body, (ev_ssize_t)len), len, out);
}

static void on_response(struct evhttp_request *req, void *arg)
{
    tax_op *op = arg;
    tax_client *t = op->t;
    int code = req ? evhttp_request_get_response_code(req) : 0;
    bool reusable = code == 200 && op->state == OP_PENDING;
    struct evhttp_connection *conn = op->conn;
    op->conn = NULL;
    conn_release(t, conn, reusable);
    if (op->state == OP_ORPHAN) {
        op_free(op);
        return;
    }
    evtimer_del(op->deadline);
    if (code == 0) {
        op_fail(op, 503, "tax_unavailable", "the tax service could not be reached");
    } else if (code != 200) {
        op_fail(op, 502, "tax_bad_answer", "the tax service answered with an error");
    } else if (parse_answer(evhttp_request_get_input_buffer(req), &op->tax_cents) < 0) {
        op_fail(op, 502, "tax_bad_answer", "the tax service answered with a malformed body");
    }
    op->state = OP_DONE;
    event_active(op->fire, EV_TIMEOUT, 1);
}

static void on_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tax_op *op = arg;
    op->t->state = op->failed ? 0 : 1;
    if (op->failed) {
        metrics_inc(M_TAX_ERRORS);
        log_warn("tax: %s", op->err.message);
    }
    op->cb(op->arg, op->tax_cents, op->failed ? &op->err : NULL);
    op_free(op);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tax_op *op = arg;
    op->state = OP_ORPHAN;
    op->t->state = 0;
    metrics_inc(M_TAX_ERRORS);
    qc_error err;
    qc_error_set(&err, 504, "tax_timeout", "the tax service did not answer in time");
    op->cb(op->arg, 0, &err);
}

int tax_request(tax_client *t, const char *region, int64_t product_id, int64_t amount_cents,
                const char *currency, tax_cb *cb, void *arg, qc_error *err)
{
    if (t->active >= t->max_conns) {
        qc_error_set(err, 503, "tax_busy", "too many calls to the tax service in flight");
        return -1;
    }
    struct evhttp_connection *conn = conn_get(t);
    if (conn == NULL) {
        qc_error_set(err, 503, "tax_unavailable", "cannot open a connection to the tax service");
        return -1;
    }
    tax_op *op = xcalloc(1, sizeof(*op));
    op->t = t;
    op->conn = conn;
    op->cb = cb;
    op->arg = arg;
    op->deadline = evtimer_new(t->base, on_deadline, op);
    op->fire = event_new(t->base, -1, 0, on_fire, op);
    op->next = t->ops;
    if (t->ops)
        t->ops->prev = op;
    t->ops = op;
    t->active++;

    char uri[512];
    snprintf(uri, sizeof(uri), "%s/v1/tax?region=%s&product_id=%lld&amount_cents=%lld&currency=%s",
             t->prefix, region, (long long)product_id, (long long)amount_cents, currency);
    struct evhttp_request *req = evhttp_request_new(on_response, op);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", t->host);
    struct timeval tv = {t->timeout_ms / 1000, (t->timeout_ms % 1000) * 1000};
    evtimer_add(op->deadline, &tv);
    if (evhttp_make_request(conn, req, EVHTTP_REQ_GET, uri) < 0) {
        /* evhttp has let go of req; answer from the loop as for any failure. */
        op->conn = NULL;
        graveyard_bury(t->graveyard, conn);
        evtimer_del(op->deadline);
        op_fail(op, 503, "tax_unavailable", "cannot send to the tax service");
        op->state = OP_DONE;
        event_active(op->fire, EV_TIMEOUT, 1);
    }
    return 0;
}

tax_client *tax_client_new(struct event_base *base, const char *url, int timeout_ms, int max_conns)
{
    struct evhttp_uri *u = evhttp_uri_parse(url);
    if (u == NULL)
        return NULL;
    const char *host = evhttp_uri_get_host(u);
    const char *path = evhttp_uri_get_path(u);
    tax_client *t = NULL;
    if (host != NULL && strlen(host) < sizeof(t->host) && (path == NULL || strlen(path) < 200)) {
        t = xcalloc(1, sizeof(*t));
        snprintf(t->host, sizeof(t->host), "%s", host);
        t->port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 80;
        snprintf(t->prefix, sizeof(t->prefix), "%s", path ? path : "");
        size_t plen = strlen(t->prefix);
        if (plen > 0 && t->prefix[plen - 1] == '/')
            t->prefix[plen - 1] = '\0';
        t->base = base;
        t->timeout_ms = timeout_ms;
        t->max_conns = max_conns;
        t->state = -1;
        t->graveyard = graveyard_new(base);
    }
    evhttp_uri_free(u);
    return t;
}

void tax_client_free(tax_client *t)
{
    if (t == NULL)
        return;
    while (t->ops != NULL) {
        tax_op *op = t->ops;
        if (op->state == OP_PENDING) {
            qc_error err;
            qc_error_set(&err, 503, "shutting_down", "the proxy is shutting down");
            op->cb(op->arg, 0, &err);
        } else if (op->state == OP_DONE) {
            op->cb(op->arg, op->tax_cents, op->failed ? &op->err : NULL);
        }
        if (op->conn)
            evhttp_connection_free(op->conn); /* frees the request, no callback */
        op_free(op);
    }
    conn_list_free(t->idle);
    graveyard_free(t->graveyard);
    free(t);
}

const char *tax_client_state(const tax_client *t)
{
    return t->state < 0 ? "unknown" : t->state ? "up" : "down";
}
