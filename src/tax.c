/* tax: the calls to the tax service, each a GET over the keep-alive HTTP
 * client of upstream.c (which owns the connections, the deadline and the
 * one retry of a call whose kept connection turned out closed), and the
 * strict reading of what the service answers.
 *
 * A call's life is upstream's op: tax_request starts it, upstream calls
 * on_answer exactly once from the loop (never inside tax_request), and
 * the call is freed there. Shutdown is upstream_free's: every call still
 * in flight is answered 503 shutting_down first. */
#include "quotecache/tax.h"

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"
#include "quotecache/upstream.h"

#define TAX_MAX_BODY 4096

typedef struct tax_call {
    tax_client *t;
    tax_cb *cb;
    void *arg;
} tax_call;

struct tax_client {
    upstream *u;
    int max_conns;
    int active; /* calls in flight */
    int state;  /* -1 unknown, 0 down, 1 up */
};

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

/* What the caller is told when no tax came back: upstream's transport
 * errors (already logged there) in the tax service's own terms (tax.h):
 * an answer that came but cannot be read is a bad answer (502), none or
 * one cut short by the close is a service not reached (503). */
static void transport_error(const upstream_answer *a, qc_error *out)
{
    const qc_error *in = a->err;
    if (a->unreadable)
        qc_error_set(out, 502, "tax_bad_answer",
                     "the tax service answered with a malformed answer");
    else if (in->status == 504)
        qc_error_set(out, 504, "tax_timeout", "the tax service did not answer in time");
    else if (strcmp(in->code, "upstream_unavailable") == 0)
        qc_error_set(out, 503, "tax_unavailable", "the tax service could not be reached");
    else if (strcmp(in->code, "upstream_busy") == 0)
        qc_error_set(out, 503, "tax_busy", "too many calls to the tax service in flight");
    else if (strcmp(in->code, "shutting_down") == 0)
        *out = *in;
    else /* too large, a field name that is not a token */
        qc_error_set(out, 502, "tax_bad_answer", "the tax service answered with a malformed body");
}

static void on_answer(void *arg, const upstream_answer *a)
{
    tax_call *call = arg;
    tax_client *t = call->t;
    int64_t tax = 0;
    qc_error err;
    bool failed = true;
    if (a->err != NULL) {
        transport_error(a, &err);
    } else if (a->status != 200) {
        qc_error_set(&err, 502, "tax_bad_answer", "the tax service answered with an error");
        log_warn("tax: %s (%d)", err.message, a->status);
    } else if (parse_answer(a->body, &tax) < 0) {
        qc_error_set(&err, 502, "tax_bad_answer", "the tax service answered with a malformed body");
        log_warn("tax: %s", err.message);
    } else {
        failed = false;
    }
    bool shutdown = failed && strcmp(err.code, "shutting_down") == 0;
    if (!shutdown) {
        t->state = failed ? 0 : 1;
        if (failed)
            metrics_inc(M_TAX_ERRORS);
    }
    t->active--;
    tax_cb *cb = call->cb;
    void *cb_arg = call->arg;
    free(call);
    cb(cb_arg, tax, failed ? &err : NULL);
}

int tax_request(tax_client *t, const char *region, int64_t product_id, int64_t amount_cents,
                const char *currency, tax_cb *cb, void *arg, qc_error *err)
{
    if (t->active >= t->max_conns) {
        qc_error_set(err, 503, "tax_busy", "too many calls to the tax service in flight");
        return -1;
    }
    char target[512];
    snprintf(target, sizeof(target),
             "/v1/tax?region=%s&product_id=%lld&amount_cents=%lld&currency=%s", region,
             (long long)product_id, (long long)amount_cents, currency);
    tax_call *call = xmalloc(sizeof(*call));
    call->t = t;
    call->cb = cb;
    call->arg = arg;
    t->active++;
    upstream_get(t->u, target, on_answer, call);
    return 0;
}

tax_client *tax_client_new(struct event_base *base, const char *url, int timeout_ms, int max_conns,
                           char *err, size_t errlen)
{
    upstream *u = upstream_new(base, "tax", url, timeout_ms, TAX_MAX_BODY, max_conns, err, errlen);
    if (u == NULL)
        return NULL;
    tax_client *t = xcalloc(1, sizeof(*t));
    t->u = u;
    t->max_conns = max_conns;
    t->state = -1;
    return t;
}

void tax_client_free(tax_client *t)
{
    if (t == NULL)
        return;
    upstream_free(t->u);
    free(t);
}

const char *tax_client_state(const tax_client *t)
{
    return t->state < 0 ? "unknown" : t->state ? "up" : "down";
}
