/* proxy: owns the route table, the local cache and the proxy ops (a
 * forwarded request and what to do with its answer). A proxy op owns its
 * upstream op; cancelling it detaches the upstream op (which aborts and
 * frees itself) and frees the proxy op at once, since nothing else points
 * to it. */
#include "quotecache/proxy.h"

#include <event2/buffer.h>
#include <event2/http.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quotecache/httpcache.h"
#include "quotecache/httphdr.h"
#include "quotecache/localcache.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/proxyhdr.h"

#define KEY_MAX 8192
#define IDENTITY_MAX 4096
#define QUERY_PARTS_MAX 64

struct proxy {
    upstream *up;
    routes *rt;
    lcache *lc;
};

struct proxy_op {
    proxy *p;
    upstream_op *up;
    proxy_cb *cb;
    void *arg;
    const route *r;
    bool head;
    char *key;            /* non-NULL: store a cacheable answer under it */
    char *invalidate_key; /* non-NULL: a write; a 2xx drops that GET copy */
    struct evkeyvalq req; /* the client's fields, for the store decision and Vary */
};

static int64_t now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* ---- keys ---- */

typedef struct qpart {
    const char *s;
    size_t n, keylen;
    int order;
} qpart;

static int qpart_cmp(const void *a, const void *b)
{
    const qpart *x = a, *y = b;
    size_t n = x->keylen < y->keylen ? x->keylen : y->keylen;
    int c = memcmp(x->s, y->s, n);
    if (c == 0 && x->keylen != y->keylen)
        c = x->keylen < y->keylen ? -1 : 1;
    return c != 0 ? c : x->order - y->order; /* stable: repeated names keep their order */
}

/* path?query with the query's parameters sorted by name, so that the
 * order a client writes them in does not split the cache. */
static void normalized_target(const char *target, char *buf, size_t len)
{
    const char *q = strchr(target, '?');
    if (q == NULL || q[1] == '\0') {
        snprintf(buf, len, "%.*s", q ? (int)(q - target) : (int)strlen(target), target);
        return;
    }
    qpart parts[QUERY_PARTS_MAX];
    int n = 0;
    for (const char *p = q + 1; *p && n < QUERY_PARTS_MAX;) {
        size_t plen = strcspn(p, "&");
        if (plen > 0) {
            parts[n] = (qpart){p, plen, strcspn(p, "=&"), n};
            n++;
        }
        p += plen + (p[plen] == '&');
    }
    if (n == QUERY_PARTS_MAX) { /* too many to sort: as given */
        snprintf(buf, len, "%s", target);
        return;
    }
    qsort(parts, (size_t)n, sizeof(parts[0]), qpart_cmp);
    size_t w = (size_t)snprintf(buf, len, "%.*s?", (int)(q - target), target);
    for (int i = 0; i < n && w < len; i++)
        w +=
            (size_t)snprintf(buf + w, len - w, "%s%.*s", i ? "&" : "", (int)parts[i].n, parts[i].s);
}

int proxy_local_key(const route *r, const char *target, const char *identity, char *buf, size_t len)
{
    unsigned char d[32];
    unsigned int dlen = 0;
    EVP_Digest(identity, strlen(identity), d, &dlen, EVP_sha256(), NULL);
    /* By hand: 32 snprintf calls were a third of a local hit's cost. */
    static const char digits[] = "0123456789abcdef";
    char hex[65];
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[d[i] >> 4];
        hex[2 * i + 1] = digits[d[i] & 15];
    }
    hex[64] = '\0';
    char norm[KEY_MAX];
    if (strlen(target) >= sizeof(norm))
        return -1; /* its normal form would be cut: two targets, one key */
    normalized_target(target, norm, sizeof(norm));
    int n = snprintf(buf, len, "GET %s\n%s\n%s", norm, r->name, hex);
    return n >= 0 && (size_t)n < len ? 0 : -1;
}

/* The target in origin form (an absolute-form one loses its authority). */
static const char *origin_target(struct evhttp_request *req)
{
    const char *uri = evhttp_request_get_uri(req);
    if (strncasecmp(uri, "http://", 7) == 0) {
        uri += 7 + strcspn(uri + 7, "/?"); /* "http://h?q": "?q", its query kept */
        if (uri[0] == '\0')
            uri = "/";
    }
    return uri;
}

/* The key of req's copy under r, when r is local and the request names
 * its identity; false otherwise (not cached at all). */
static bool local_key(const route *r, struct evhttp_request *req, char *key, size_t len)
{
    if (r == NULL || r->policy != ROUTE_LOCAL)
        return false;
    char id[IDENTITY_MAX];
    if (routes_identity(r, evhttp_request_get_input_headers(req), id, sizeof(id)) < 0)
        return false; /* no identity: nobody's copy */
    /* A target too long for the key is nobody's copy either: a cut key
     * would end before the identity's digest. */
    return proxy_local_key(r, origin_target(req), id, key, len) == 0;
}

static bool wants_fresh(const struct evkeyvalq *in)
{
    const char *cc = evhttp_find_header(in, "Cache-Control");
    const char *pragma = evhttp_find_header(in, "Pragma");
    return httphdr_has_token(cc, "no-cache") || httphdr_has_token(cc, "no-store") ||
           httphdr_has_token(pragma, "no-cache");
}

/* ---- replies ---- */

static void reply_init(proxy_reply *out, const route *r)
{
    memset(out, 0, sizeof(*out));
    TAILQ_INIT(&out->headers);
    out->route = r ? r->name : "unlisted";
}

void proxy_reply_release(proxy_reply *r)
{
    evhttp_clear_headers(&r->headers);
    if (r->owned)
        evbuffer_free(r->owned);
    r->owned = NULL;
}

static void add_cache_fields(proxy_reply *out, const char *x, const char *status)
{
    evhttp_add_header(&out->headers, "X-Cache", x);
    evhttp_add_header(&out->headers, "Cache-Status", status);
}

bool proxy_try_local(proxy *p, struct evhttp_request *req, const char *path, proxy_reply *out)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD)
        return false;
    const route *r = routes_match(p->rt, EVHTTP_REQ_GET, path);
    char key[KEY_MAX];
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    if (!local_key(r, req, key, sizeof(key)) || wants_fresh(in))
        return false;
    int64_t now = now_ms();
    const lcache_entry *e = lcache_get(p->lc, key, in, now);
    if (e == NULL)
        return false;
    reply_init(out, r);
    for (const struct evkeyval *kv = e->headers->tqh_first; kv; kv = kv->next.tqe_next) {
        if (strcasecmp(kv->key, "Age") != 0)
            evhttp_add_header(&out->headers, kv->key, kv->value);
    }
    char buf[96];
    snprintf(buf, sizeof(buf), "%lld", (long long)((now - e->stored_ms) / 1000));
    evhttp_add_header(&out->headers, "Age", buf);
    snprintf(buf, sizeof(buf), "quotecache; hit; ttl=%lld",
             (long long)((e->expires_ms - now) / 1000));
    add_cache_fields(out, "HIT", buf);
    out->xcache = X_HIT;
    out->upstream_seconds = -1; /* no upstream call */
    out->status = e->status;
    if (httpcache_not_modified(in, e->etag, e->last_modified)) {
        out->status = 304;
    } else if (m == EVHTTP_REQ_HEAD) {
        snprintf(buf, sizeof(buf), "%zu", e->len);
        evhttp_add_header(&out->headers, "Content-Length", buf);
    } else {
        out->owned = out->body = evbuffer_new();
        evbuffer_add(out->body, e->body, e->len);
    }
    return true;
}

/* ---- forwarding ---- */

static void op_free(proxy_op *op)
{
    evhttp_clear_headers(&op->req);
    free(op->key);
    free(op->invalidate_key);
    free(op);
}

/* Stores the answer when the route and RFC 9111 allow; says how in the
 * cache fields. */
static void store_or_not(proxy_op *op, const upstream_answer *a, proxy_reply *out)
{
    httpcache_verdict v;
    /* out holds the upstream's fields alone yet (moved from a). */
    httpcache_decide(a->status, &op->req, &out->headers, false, op->r->ttl_s, &v);
    size_t len = evbuffer_get_length(a->body);
    if (v.store &&
        lcache_put(op->p->lc, op->key, a->status, &out->headers,
                   (const char *)evbuffer_pullup(a->body, -1), len, &op->req, &v, now_ms()) == 0) {
        add_cache_fields(out, "MISS", "quotecache; fwd=uri-miss; stored");
        out->xcache = X_MISS;
        return;
    }
    log_debug("proxy %s: not stored (%s)", op->r->name, v.why ? v.why : "too large");
    add_cache_fields(out, "MISS", "quotecache; fwd=uri-miss");
    out->xcache = X_MISS;
}

static void on_upstream(void *arg, const upstream_answer *a)
{
    proxy_op *op = arg;
    proxy_reply out;
    reply_init(&out, op->r);
    out.upstream_seconds = a->seconds;
    if (a->err != NULL) {
        out.err = a->err;
        add_cache_fields(&out, "BYPASS", "quotecache; fwd=bypass; detail=error");
        out.xcache = X_BYPASS;
    } else {
        proxyhdr_move_all(a->headers, &out.headers); /* ours to move (upstream.h) */
        if (op->key != NULL) {
            store_or_not(op, a, &out);
        } else {
            add_cache_fields(&out, "BYPASS", "quotecache; fwd=bypass");
            out.xcache = X_BYPASS;
        }
        /* RFC 9111 4.4: a successful write makes the stored GET of its
         * target (for this identity) invalid. */
        if (op->invalidate_key != NULL && a->status >= 200 && a->status < 300)
            lcache_delete(op->p->lc, op->invalidate_key);
        out.status = a->status;
        out.body = op->head ? NULL : a->body;
    }
    op->cb(op->arg, &out);
    proxy_reply_release(&out);
    op_free(op);
}

proxy_op *proxy_forward(proxy *p, struct evhttp_request *req, const char *path, proxy_cb *cb,
                        void *arg)
{
    enum evhttp_cmd_type m = evhttp_request_get_command(req);
    proxy_op *op = xcalloc(1, sizeof(*op));
    op->p = p;
    op->cb = cb;
    op->arg = arg;
    op->head = m == EVHTTP_REQ_HEAD;
    op->r = routes_match(p->rt, m, path);
    TAILQ_INIT(&op->req);
    char key[KEY_MAX];
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *cc = evhttp_find_header(in, "Cache-Control");
    if (m == EVHTTP_REQ_GET && local_key(op->r, req, key, sizeof(key)) &&
        !httphdr_has_token(cc, "no-store")) {
        op->key = xstrdup(key);
        for (const struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next)
            evhttp_add_header(&op->req, kv->key, kv->value);
    } else if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD && m != EVHTTP_REQ_OPTIONS &&
               local_key(routes_match(p->rt, EVHTTP_REQ_GET, path), req, key, sizeof(key))) {
        op->invalidate_key = xstrdup(key);
    }
    op->up = upstream_forward(p->up, req, on_upstream, op);
    return op;
}

void proxy_cancel(proxy_op *op)
{
    upstream_cancel(op->up);
    op_free(op);
}

proxy *proxy_new(upstream *up, routes *rt, size_t local_bytes)
{
    proxy *p = xcalloc(1, sizeof(*p));
    p->up = up;
    p->rt = rt;
    p->lc = lcache_new(local_bytes);
    return p;
}

void proxy_free(proxy *p)
{
    if (p == NULL)
        return;
    upstream_free(p->up); /* answers its ops: our callbacks reply 503 */
    routes_free(p->rt);
    lcache_free(p->lc);
    free(p);
}
