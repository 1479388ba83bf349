/* proxy: owns the route table, the local cache and the proxy ops (a
 * forwarded request and what to do with its answer). A proxy op owns its
 * upstream op; cancelling it detaches the upstream op (which aborts and
 * frees itself) and frees the proxy op at once, since nothing else points
 * to it. */
#include "quotecache/proxy.h"

#include <ctype.h>
#include <event2/buffer.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quotecache/cachestatus.h"
#include "quotecache/hdrlist.h"
#include "quotecache/httpcache.h"
#include "quotecache/httpconn.h"
#include "quotecache/httphdr.h"
#include "quotecache/localcache.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/proxyhdr.h"
#include "quotecache/sha256.h"
#include "quotecache/shared.h"
#include "quotecache/sharedkey.h"
#include "quotecache/strbuf.h"

#define LOCAL_KEY_MAX 8192
#define IDENTITY_MAX 4096
#define QUERY_PARTS_MAX 64

struct proxy {
    upstream *up;
    routes *rt;
    lcache *lc;
    shared *sh; /* shared routes; NULL until proxy_attach */
    rcache *rc; /* NULL: --redis none, or closing */
};

struct proxy_op {
    proxy *p;
    upstream_op *up;
    proxy_cb *cb;
    void *arg;
    const route *r;
    bool head;
    char *key;            /* non-NULL: store a cacheable answer under it */
    char *invalidate_key; /* non-NULL: a write; a 2xx or 3xx drops that GET copy */
    struct evkeyvalq req; /* the client's fields, for the store decision and Vary */
    shared_req *sq;       /* a shared route's request instead of up */
    char *wpath;          /* a write: its path, for the invalidation of its resources */
    /* A 2xx or 3xx write waits for Redis to acknowledge its counter bumps
     * and its announcement before it is answered, so no instance serves
     * the old copy after the client saw the write succeed. */
    bool bumping;
    proxy_reply held;
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
 * order a client writes them in does not split the cache; appended to sb
 * (no snprintf: three per local hit were 2.7k instructions). */
static void put_normalized_target(strbuf *sb, const char *target)
{
    const char *q = strchr(target, '?');
    if (q == NULL || q[1] == '\0') {
        strbuf_mem(sb, target, q ? (size_t)(q - target) : strlen(target));
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
        strbuf_str(sb, target);
        return;
    }
    qsort(parts, (size_t)n, sizeof(parts[0]), qpart_cmp);
    strbuf_mem(sb, target, (size_t)(q - target) + 1); /* with its '?' */
    for (int i = 0; i < n; i++) {
        if (i > 0)
            strbuf_mem(sb, "&", 1);
        strbuf_mem(sb, parts[i].s, parts[i].n);
    }
}

int proxy_local_key(const route *r, const char *target, const char *identity, const char *host,
                    char *buf, size_t len)
{
    /* The digest of identity, then NUL and the Host when there is one: a
     * field value holds no NUL, so no two (identity, host) pairs meet. */
    char who[IDENTITY_MAX + 1 + 256];
    size_t il = strlen(identity), hl = host ? strlen(host) : 0, wl = il;
    if (il + 1 + hl > sizeof(who))
        return -1;
    memcpy(who, identity, il);
    if (host != NULL) {
        who[wl++] = '\0';
        for (size_t i = 0; i < hl; i++) /* a host name has no case (RFC 9110 4.2.3) */
            who[wl++] = (char)tolower((unsigned char)host[i]);
    }
    char hex[2 * SHA256_LEN + 1];
    sha256_hex(who, wl, SHA256_LEN, hex);
    /* A key that does not fit is none (-1): cut, two targets would share it. */
    strbuf k = strbuf_on(buf, len);
    strbuf_mem(&k, "GET ", 4);
    put_normalized_target(&k, target);
    strbuf_mem(&k, "\n", 1);
    strbuf_str(&k, r->name);
    strbuf_mem(&k, "\n", 1);
    strbuf_str(&k, hex);
    return strbuf_ok(&k) ? 0 : -1;
}

/* The target in origin form (an absolute-form one loses its authority). */
static const char *origin_target(http_req *req)
{
    const char *uri = req->target;
    if (strncasecmp(uri, "http://", 7) == 0) {
        uri += 7 + strcspn(uri + 7, "/?"); /* "http://h?q": "?q", its query kept */
        if (uri[0] == '\0')
            uri = "/";
    }
    return uri;
}

/* The key of req's copy under r, when r is local and the request names
 * its identity; false otherwise (not cached at all). */
static bool local_key(const route *r, http_req *req, char *key, size_t len)
{
    if (r == NULL || r->policy != ROUTE_LOCAL)
        return false;
    char id[IDENTITY_MAX];
    if (routes_identity(r, req->in, id, sizeof(id)) < 0)
        return false; /* no identity: nobody's copy */
    /* A target too long for the key is nobody's copy either: a cut key
     * would end before the identity's digest. */
    const char *host = evhttp_find_header(req->in, "Host");
    return proxy_local_key(r, origin_target(req), id, host, key, len) == 0;
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
    hdrlist_clear(&r->headers);
    if (r->owned)
        evbuffer_free(r->owned);
    r->owned = NULL;
}

static void add_cache_fields(proxy_reply *out, const char *x, const char *status)
{
    hdrlist_add(&out->headers, "X-Cache", x);
    hdrlist_add(&out->headers, "Cache-Status", status);
}

static bool try_local(proxy *p, http_req *req, const char *path, proxy_reply *out);

bool proxy_try_hit(proxy *p, http_req *req, const char *path, proxy_reply *out)
{
    enum evhttp_cmd_type m = req->method;
    if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD)
        return false;
    if (try_local(p, req, path, out))
        return true;
    const route *r = routes_match(p->rt, m, path); /* as proxy_forward matches it */
    return r != NULL && r->policy == ROUTE_SHARED && p->sh != NULL &&
           shared_try_hot(p->sh, r, req, path, out);
}

static bool try_local(proxy *p, http_req *req, const char *path, proxy_reply *out)
{
    enum evhttp_cmd_type m = req->method;
    const route *r = routes_match(p->rt, EVHTTP_REQ_GET, path);
    char key[LOCAL_KEY_MAX];
    struct evkeyvalq *in = req->in;
    if (!local_key(r, req, key, sizeof(key)) || proxyhdr_wants_origin(in))
        return false;
    int64_t now = now_ms();
    const lcache_entry *e = lcache_get(p->lc, key, in, now);
    if (e == NULL)
        return false;
    reply_init(out, r);
    for (const struct evkeyval *kv = e->headers->tqh_first; kv; kv = kv->next.tqe_next) {
        if (!httphdr_name_is(kv->key, "Age"))
            hdrlist_add(&out->headers, kv->key, kv->value);
    }
    char buf[96]; /* by strbuf: two snprintf calls were 1.4k of a hit */
    strbuf b = strbuf_on(buf, sizeof(buf));
    strbuf_i64(&b, cache_status_age(X_HIT, e->stored_ms, now)); /* never negative */
    hdrlist_add(&out->headers, "Age", buf);
    b = strbuf_on(buf, sizeof(buf));
    strbuf_str(&b, "quotecache; hit; ttl=");
    strbuf_i64(&b, (e->expires_ms - now) / 1000);
    add_cache_fields(out, "HIT", buf);
    out->xcache = X_HIT;
    out->upstream_seconds = -1; /* no upstream call */
    out->status = e->status;
    if (httpcache_not_modified(in, e->etag, e->last_modified)) {
        out->status = 304;
    } else if (m == EVHTTP_REQ_HEAD) {
        snprintf(buf, sizeof(buf), "%zu", e->len);
        hdrlist_add(&out->headers, "Content-Length", buf);
    } else {
        out->owned = out->body = evbuffer_new();
        evbuffer_add(out->body, e->body, e->len);
    }
    return true;
}

/* ---- forwarding ---- */

static void op_free(proxy_op *op)
{
    hdrlist_clear(&op->req);
    free(op->key);
    free(op->invalidate_key);
    free(op->wpath);
    free(op);
}

/* ---- invalidation of local copies ---- */

#define INVAL_RESOURCES_MAX 64

typedef struct local_inval {
    const routes *rt;
    int n;
    const route *r[INVAL_RESOURCES_MAX];
    char res[INVAL_RESOURCES_MAX][SKEY_RESOURCE_MAX];
} local_inval;

static void collect_resource(void *arg, const route *r, const char *resource)
{
    local_inval *li = arg;
    if (li->n < INVAL_RESOURCES_MAX) {
        li->r[li->n] = r;
        snprintf(li->res[li->n++], SKEY_RESOURCE_MAX, "%s", resource);
    }
}

/* A local key is "GET <target>\n<route>\n<identity digest>": true when
 * its (route, path) resource is one the write touched. */
static bool key_invalidated(void *arg, const char *key)
{
    local_inval *li = arg;
    const char *target = key + 4, *nl = strchr(target, '\n');
    if (strncmp(key, "GET ", 4) != 0 || nl == NULL)
        return false;
    const char *name = nl + 1, *nl2 = strchr(name, '\n');
    size_t plen = strcspn(target, "?\n"), nlen = nl2 ? (size_t)(nl2 - name) : strlen(name);
    char path[LOCAL_KEY_MAX], res[SKEY_RESOURCE_MAX];
    if (plen >= sizeof(path))
        return false;
    memcpy(path, target, plen);
    path[plen] = '\0';
    for (int i = 0; i < li->n; i++) {
        const route *r = li->r[i];
        if (strlen(r->name) == nlen && strncmp(r->name, name, nlen) == 0 &&
            skey_resource(r, path, res, sizeof(res)) == 0 && strcmp(res, li->res[i]) == 0)
            return true;
    }
    return false;
}

/* Drops this worker's local copies (every identity's) of the resources a
 * write to wpath touched (sharedkey.h). */
static void local_invalidate(proxy *p, const char *wpath)
{
    local_inval *li = xcalloc(1, sizeof(*li));
    li->rt = p->rt;
    if (skey_write_resources(p->rt, wpath, ROUTE_LOCAL, collect_resource, li) > 0) {
        size_t n = lcache_drop_if(p->lc, key_invalidated, li);
        log_debug("proxy: a write to %s dropped %zu local copies", wpath, n);
    }
    free(li);
}

static void on_message(void *arg, const char *msg, size_t len)
{
    proxy *p = arg;
    if (msg == NULL) {
        /* The subscription is back: invalidations may have been missed
         * while it was down, and local copies are cheap to refetch. */
        lcache_clear(p->lc);
        shared_on_message(p->sh, NULL, 0);
        return;
    }
    if (len > 2 && msg[0] == 'i' && msg[1] == ' ') {
        char path[LOCAL_KEY_MAX];
        if (len - 2 >= sizeof(path))
            return;
        memcpy(path, msg + 2, len - 2);
        path[len - 2] = '\0';
        local_invalidate(p, path);
        shared_on_write(p->sh, p->rt, path);
        return;
    }
    if (len == 1 && msg[0] == 'a') { /* a purge of everything */
        lcache_clear(p->lc);
        shared_drop_copies(p->sh);
        return;
    }
    shared_on_message(p->sh, msg, len);
}

/* Tells every worker of every instance, this one included (through its
 * subscription), msg on the routes channel. Returns 0 when it was sent
 * (done, if any, runs once Redis answers), -1 when not: Redis is away. */
static int announce(proxy *p, const char *msg, rcache_done_cb *done, void *arg)
{
    if (p->rc == NULL || !rcache_is_up(p->rc))
        return -1;
    return rcache_publish(p->rc, shared_channel(p->sh), msg, done, arg) < 0 ? -1 : 0;
}

/* A write to wpath: every worker drops its local copies and its
 * in-process shared copies of the resources touched; without Redis this
 * worker alone. */
static int announce_write(proxy *p, const char *wpath, rcache_done_cb *done, void *arg)
{
    size_t n = strlen(wpath) + 3;
    char *msg = xmalloc(n);
    snprintf(msg, n, "i %s", wpath);
    int rc = announce(p, msg, done, arg);
    free(msg);
    if (rc < 0) {
        local_invalidate(p, wpath);
        if (p->sh != NULL)
            shared_on_write(p->sh, p->rt, wpath);
    }
    return rc;
}

/* A 2xx or 3xx write: the shared resources' counters are bumped, then the
 * write is announced (after the bumps: a worker that drops its copy on
 * the announcement and reads Redis again must find the counter moved).
 * Returns true when the answer must wait for both (op_bumped). */
static void op_bumped(void *arg, bool ok);
static bool invalidate_write(proxy_op *op)
{
    proxy *p = op->p;
    if (p->sh != NULL && shared_invalidate(p->sh, p->rt, op->wpath, op_bumped, op) > 0)
        return true;
    local_inval *li = xcalloc(1, sizeof(*li));
    int nlocal = skey_write_resources(p->rt, op->wpath, ROUTE_LOCAL, collect_resource, li);
    free(li);
    if (nlocal > 0) /* else no local route holds it: nothing to tell */
        announce_write(p, op->wpath, NULL, NULL);
    return false;
}

/* Stores the answer when the route and RFC 9111 allow; says how in the
 * cache fields. */
static void store_or_not(proxy_op *op, const upstream_answer *a, proxy_reply *out)
{
    httpcache_verdict v;
    /* out holds the upstream's fields alone yet (moved from a). */
    httpcache_decide(a->status, &op->req, &out->headers, false, op->r->ttl_s, &v);
    size_t len = evbuffer_get_length(a->body);
    int64_t now = now_ms();
    lcache_times t = {now, now + v.ttl_s * 1000, now + v.ttl_s * 1000};
    if (v.store &&
        lcache_put(op->p->lc, op->key, a->status, &out->headers,
                   (const char *)evbuffer_pullup(a->body, -1), len, &op->req, &v, &t) == 0) {
        add_cache_fields(out, "MISS", "quotecache; fwd=uri-miss; stored");
        out->xcache = X_MISS;
        return;
    }
    log_debug("proxy %s: not stored (%s)", op->r->name, v.why ? v.why : "too large");
    add_cache_fields(out, "MISS", "quotecache; fwd=uri-miss");
    out->xcache = X_MISS;
}

static void op_answer_held(proxy_op *op)
{
    if (op->cb != NULL)
        op->cb(op->arg, &op->held);
    proxy_reply_release(&op->held);
    op_free(op);
}

static void op_announced(void *arg, int status, long long result)
{
    (void)status; /* not acknowledged: copies elsewhere go by SHOT_MS */
    (void)result;
    op_answer_held(arg);
}

/* Answered once the announcement is acknowledged too: by then Redis has
 * handed it to every subscriber, before the client can ask again. Not
 * when a bump failed (Redis hangs, or is gone): then the old copies may
 * be current in Redis until the bump owed is paid, and waiting for the
 * announcement would only add a second deadline to the answer. */
static void op_bumped(void *arg, bool ok)
{
    proxy_op *op = arg;
    if (!ok) {
        announce_write(op->p, op->wpath, NULL, NULL);
        op_answer_held(op);
    } else if (announce_write(op->p, op->wpath, op_announced, op) < 0) {
        op_answer_held(op);
    }
}

static void on_upstream(void *arg, const upstream_answer *a)
{
    proxy_op *op = arg;
    proxy_reply out;
    op->up = NULL;
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
        out.status = a->status;
        out.body = op->head ? NULL : a->body;
        /* RFC 9111 4.4: a write answered without error (2xx, or 3xx: a
         * form POST answered 303 is followed by the GET of what it
         * changed) makes the stored GET of its target (for this
         * identity) invalid, and its resources' copies everywhere. */
        if (op->wpath != NULL && a->status >= 200 && a->status < 400) {
            if (op->invalidate_key != NULL)
                lcache_delete(op->p->lc, op->invalidate_key);
            if (invalidate_write(op)) {
                out.owned = evbuffer_new(); /* a->body lives during this call only */
                evbuffer_add_buffer(out.owned, a->body);
                out.body = op->head ? NULL : out.owned;
                op->held = out;
                /* The list head moved: re-link it to its new place. */
                TAILQ_INIT(&op->held.headers);
                proxyhdr_move_all(&out.headers, &op->held.headers);
                op->bumping = true;
                return;
            }
        }
    }
    op->cb(op->arg, &out);
    proxy_reply_release(&out);
    op_free(op);
}

static void on_shared(void *arg, proxy_reply *r)
{
    proxy_op *op = arg;
    op->sq = NULL;
    op->cb(op->arg, r);
    op_free(op);
}

proxy_op *proxy_forward(proxy *p, http_req *req, const char *path, proxy_cb *cb, void *arg)
{
    enum evhttp_cmd_type m = req->method;
    proxy_op *op = xcalloc(1, sizeof(*op));
    op->p = p;
    op->cb = cb;
    op->arg = arg;
    op->head = m == EVHTTP_REQ_HEAD;
    op->r = routes_match(p->rt, m, path);
    TAILQ_INIT(&op->req);
    char key[LOCAL_KEY_MAX];
    struct evkeyvalq *in = req->in;
    const char *cc = evhttp_find_header(in, "Cache-Control");
    if (m == EVHTTP_REQ_GET && local_key(op->r, req, key, sizeof(key)) &&
        !httphdr_has_token(cc, "no-store")) {
        op->key = xstrdup(key);
        hdrlist_copy(&op->req, in);
    } else if ((m == EVHTTP_REQ_GET || m == EVHTTP_REQ_HEAD) && op->r != NULL &&
               op->r->policy == ROUTE_SHARED && p->sh != NULL) {
        op->sq = shared_get(p->sh, op->r, req, path, on_shared, op);
        if (op->sq != NULL)
            return op;
    } else if (m != EVHTTP_REQ_GET && m != EVHTTP_REQ_HEAD && m != EVHTTP_REQ_OPTIONS) {
        op->wpath = xstrdup(path);
        if (local_key(routes_match(p->rt, EVHTTP_REQ_GET, path), req, key, sizeof(key)))
            op->invalidate_key = xstrdup(key);
    }
    op->up = upstream_forward(p->up, req, on_upstream, op);
    return op;
}

void proxy_cancel(proxy_op *op)
{
    if (op->bumping) { /* answered by the upstream: op_bumped frees it */
        op->cb = NULL;
        return;
    }
    if (op->sq != NULL)
        shared_cancel(op->sq);
    else
        upstream_cancel(op->up);
    op_free(op);
}

void proxy_attach(proxy *p, struct event_base *base, rcache *rc, const char *version,
                  int lock_ttl_ms, int upstream_timeout_ms)
{
    p->rc = rc;
    p->sh = shared_new(base, p->up, rc, version, lock_ttl_ms, upstream_timeout_ms);
    if (rc != NULL)
        rcache_subscribe(rc, shared_channel(p->sh), on_message, p);
}

bool proxy_purged(proxy *p, rcache_done_cb *done, void *arg)
{
    lcache_clear(p->lc);
    if (p->sh == NULL)
        return false;
    shared_drop_copies(p->sh);
    return announce(p, "a", done, arg) == 0; /* not sent: the others' go by SHOT_MS */
}

void proxy_redis_state(proxy *p, bool up)
{
    (void)up; /* either way what was read before may be void (rcache.h) */
    if (p->sh != NULL)
        shared_drop_copies(p->sh);
}

void proxy_close(proxy *p)
{
    if (p == NULL)
        return;
    p->rc = NULL;
    shared_close(p->sh);
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
    shared_free(p->sh);
    routes_free(p->rt);
    lcache_free(p->lc);
    free(p);
}
