/* shared: owns the shared routes' requests (a Redis read, then a wait in
 * a flight, or a forward of their own) and their loads (one per key being
 * fetched, the owner of its flight).
 *
 * A load is a state machine with one transition function, sl_set_state,
 * which checks the move, logs it (debug, with the key) and arms the one
 * deadline of the state entered:
 *
 *   NEW -> LOCKING -----------> FETCHING -> STORING -> DONE
 *            |                   ^    ^        |
 *            v   (took over)     |    +- REFENCING  (a write moved the counter)
 *         CHECKING <-> WAITING --+
 *
 * LOCKING: SET NX PX on the entry's lock and, in the same round trip, the
 * entry and the resource's counter (rcache_lock_read: check after the
 * lock). Won: fetch, store through the fenced script (which announces
 * the key), release. Lost: wait for the announcement, or the lock's
 * expiry, then re-check (rcache_check, which takes a free lock). Without
 * Redis the same load runs in process only (ld->local).
 *
 * The quote machinery's rcache calls read the global generation and five
 * scope counters: a shared entry depends on the global one (an admin purge
 * of everything, the guard against a Redis that lost its counters, a bump
 * owed while Redis was away) and on its resource's, which names all five
 * scope slots (the entry's hash slot). An entry records the global value
 * and the scope sum as rcache read them (in cluster mode the sum counts
 * the two slot-local positions only: rcache.h), and a hit, like the fence,
 * needs both unchanged. */
#include "quotecache/shared.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <inttypes.h>
#include <stddef.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "quotecache/cachestatus.h"
#include "quotecache/flight.h"
#include "quotecache/hdrlist.h"
#include "quotecache/hex.h"
#include "quotecache/httpcache.h"
#include "quotecache/httpconn.h"
#include "quotecache/httphdr.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/proxyhdr.h"
#include "quotecache/sharedhot.h"
#include "quotecache/sharedkey.h"
#include "quotecache/strbuf.h"

#define MAX_ATTEMPTS 3       /* fetches of one flight fenced by concurrent writes */
#define REMOTE_SLACK_MS 50   /* past the other instance's lock expiry */
#define WAITERS_PER_KEY 4096 /* past it a request is forwarded on its own */
#define WAITERS_TOTAL 65536
#define TARGET_MAX 8192
#define HOT_BYTES (8u << 20) /* the in-process tier, per worker (sharedhot.h) */

enum sl_state {
    SL_NEW,
    SL_LOCKING,   /* the lock attempt (and read) is in flight */
    SL_FETCHING,  /* the upstream fetch is in flight */
    SL_STORING,   /* the fenced store is in flight */
    SL_REFENCING, /* re-reading the counter before fetching again */
    SL_WAITING,   /* another instance holds the lock; nothing in flight */
    SL_CHECKING,  /* re-reading entry and lock while another holds it */
    SL_DONE,
    SL_COUNT
};

static const char *const state_name[SL_COUNT] = {
    "NEW", "LOCKING", "FETCHING", "STORING", "REFENCING", "WAITING", "CHECKING", "DONE",
};

#define B(s) (1u << (s))
static const unsigned legal_next[SL_COUNT] = {
    [SL_NEW] = B(SL_LOCKING) | B(SL_FETCHING) | B(SL_DONE),
    [SL_LOCKING] = B(SL_FETCHING) | B(SL_WAITING) | B(SL_CHECKING) | B(SL_DONE),
    [SL_FETCHING] = B(SL_STORING) | B(SL_DONE),
    [SL_STORING] = B(SL_REFENCING) | B(SL_FETCHING) | B(SL_DONE),
    [SL_REFENCING] = B(SL_FETCHING) | B(SL_DONE),
    [SL_WAITING] = B(SL_CHECKING) | B(SL_FETCHING) | B(SL_DONE),
    [SL_CHECKING] = B(SL_CHECKING) | B(SL_WAITING) | B(SL_FETCHING) | B(SL_DONE),
    [SL_DONE] = 0,
};

typedef struct sload sload;

struct shared {
    struct event_base *base;
    upstream *up;
    rcache *rc;
    char version[KEY_VERSION_MAX + 1];
    char channel[KEY_MAX];
    char global_key[KEY_MAX]; /* the quotes' global generation */
    int lock_ttl_ms;
    flight_table *flights;
    sload *loads;        /* every live load, for shutdown and the subscriber */
    shared_req *reading; /* requests whose Redis read is in flight */
    shot *hot;           /* copies of what was read, for SHOT_MS */
    bool closing;
};

enum rq_phase { RQ_READING, RQ_WAITING, RQ_FORWARDING };

struct shared_req {
    shared_req *next, *prev; /* in sh->reading while READING */
    shared *sh;
    const route *r;
    http_req *req; /* NULL once the client left (READING only) */
    proxy_cb *cb;
    void *arg;
    enum rq_phase phase;
    flight_waiter w;
    bool head, leader;
    skey_keys k;
    char *target;    /* path?normalized query, toward the upstream */
    upstream_op *up; /* RQ_FORWARDING */
    char *canon;     /* the canonical request, for the in-process tier */
    uint64_t stamp;  /* its tier stamp before the read (sharedhot.h) */
};

struct sload {
    sload *next, *prev;
    shared *sh;
    flight *f;
    enum sl_state state; /* changed only by sl_set_state */
    const route *r;
    skey_keys k;
    scope_keys gens; /* the resource's counter in every slot (see the top) */
    char *target;
    struct evkeyvalq hdrs; /* the first request's fields: what is fetched with */
    char peer[64], request_id[64];
    uint64_t gen_global, gen_sum; /* the counters when the lock was won (or re-read) */
    bool local, locked;
    char token[33];
    int attempts;
    int wait_ms;
    struct event *timer;
    upstream_op *up;
    char *stale; /* an entry past its freshness, within the stale horizon */
    size_t stale_len;
    uint64_t stale_gen; /* the counters read with it (global + resource sum) */
    /* The fetched answer. */
    int status;
    struct evkeyvalq rh;
    struct evbuffer *body;
    double seconds;
    httpcache_verdict v;
};

/* What a finished load hands each waiter. */
typedef struct sresult {
    const qc_error *err; /* our own error (502/503/504): no answer */
    int status;
    const struct evkeyvalq *h;
    struct evkeyvalq *movable; /* instead of h: fields the answer may take (a decoded entry) */
    const char *body;
    size_t len;
    bool failed;    /* upstream error or 5xx: STALE when a waiter can have it */
    bool fetched;   /* by this load (the first request's MISS), not another's store */
    bool shareable; /* may be given to waiters other than the first */
    bool bodiless;  /* a HEAD's own answer: its Content-Length is the upstream's */
    const char *cache_status;
    int64_t stored_ms, fresh_until_ms; /* a stored copy: Age and ttl (0: none) */
    int nvary;
    const char (*vary)[64];
    const struct evkeyvalq *vary_values; /* the values the answer was made for */
    double seconds;
} sresult;

static const qc_error err_shutdown = {503, "shutting_down", "the proxy is shutting down"};

static int64_t clock_ms(clockid_t id)
{
    struct timespec t;
    clock_gettime(id, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int64_t wall_ms(void)
{
    return clock_ms(CLOCK_REALTIME);
}

/* What SHOT_MS is counted on (sharedhot.h). */
static int64_t mono_ms(void)
{
    return clock_ms(CLOCK_MONOTONIC);
}

static bool redis_usable(const shared *sh)
{
    return sh->rc != NULL && !sh->closing && rcache_is_up(sh->rc);
}

/* When an in-process copy may be kept and served: while every write
 * answered anywhere reaches this worker first, that is while Redis and
 * its subscriber are up (else no copy here hears of writes), and not on a
 * cluster (the write's announcement is answered before it reaches a
 * subscriber on another node: rcache_is_cluster). */
static bool hot_usable(const shared *sh)
{
    return redis_usable(sh) && rcache_subscribed(sh->rc) && !rcache_is_cluster(sh->rc);
}

/* Stored under the counters read now (see the top). */
static bool entry_current(const skey_entry *e, const rcache_value *v)
{
    return e->gen_global == v->gen_global && e->gen_sum == v->gen_product;
}

static void scope_keys_one(scope_keys *out, const char *gen_key)
{
    size_t n = strlen(gen_key) + 1; /* < KEY_MAX: skey_keys_of checked */
    for (int i = 0; i < SCOPE_KINDS; i++)
        memcpy(out->key[i], gen_key, n);
}

/* ---- answering one request ---- */

static void req_free(shared_req *q)
{
    free(q->target);
    free(q->canon);
    free(q);
}

/* The reply to req (of route r) from s: its fields, Age, the cache fields,
 * a 304 or HEAD's length where due. */
static void build_reply(proxy_reply *out, const route *r, http_req *req, bool head,
                        const sresult *s, enum metrics_xcache x)
{
    memset(out, 0, sizeof(*out));
    TAILQ_INIT(&out->headers);
    out->route = r->name;
    out->xcache = x;
    out->upstream_seconds = x == X_HIT || x == X_STALE ? -1 : s->seconds;
    out->err = s->err;
    int64_t now = wall_ms();
    char buf[96];
    const struct evkeyvalq *h = s->movable ? s->movable : s->h;
    const char *etag = NULL, *last_modified = NULL;
    if (s->err == NULL && s->movable != NULL) {
        /* Moved, not copied: a hit's fields cost no allocation here. */
        proxyhdr_move_all(s->movable, &out->headers);
        while (hdrlist_remove(&out->headers, "Age") == 0)
            ;
        while (hdrlist_remove(&out->headers, "X-Cache") == 0)
            ;
        h = &out->headers;
    } else if (s->err == NULL) {
        for (const struct evkeyval *kv = s->h->tqh_first; kv; kv = kv->next.tqe_next) {
            if (!httphdr_name_is(kv->key, "Age") && !httphdr_name_is(kv->key, "X-Cache"))
                hdrlist_add(&out->headers, kv->key, kv->value);
        }
    }
    if (s->err == NULL) {
        etag = evhttp_find_header(h, "ETag");
        last_modified = evhttp_find_header(h, "Last-Modified");
        if (s->stored_ms > 0) { /* by strbuf: snprintf was 0.7k of a hit */
            /* Never negative: the copy may come from an instance whose
             * clock is ahead of ours, or ours stepped back. */
            strbuf b = strbuf_on(buf, sizeof(buf));
            strbuf_i64(&b, cache_status_age(X_HIT, s->stored_ms, now));
            hdrlist_add(&out->headers, "Age", buf);
        }
    }
    hdrlist_add(&out->headers, "X-Cache", metrics_xcache_name(x));
    const char *cs = s->cache_status;
    if (x == X_HIT || x == X_STALE) {
        strbuf b = strbuf_on(buf, sizeof(buf));
        strbuf_str(&b, "quotecache; hit; ttl=");
        strbuf_i64(&b, (s->fresh_until_ms - now) / 1000);
        strbuf_str(&b, x == X_STALE ? "; detail=stale-if-error" : "");
        cs = buf;
    }
    hdrlist_add(&out->headers, "Cache-Status", cs);
    out->status = s->status;
    struct evkeyvalq *in = req->in;
    if (s->err == NULL && s->status == 200 && httpcache_not_modified(in, etag, last_modified)) {
        out->status = 304;
    } else if (s->err == NULL && head) {
        if (!s->bodiless) { /* the GET's body is here: its length is ours to say */
            snprintf(buf, sizeof(buf), "%zu", s->len);
            hdrlist_remove(&out->headers, "Content-Length");
            hdrlist_add(&out->headers, "Content-Length", buf);
        }
    } else if (s->err == NULL) {
        out->owned = out->body = evbuffer_new();
        evbuffer_add(out->body, s->body, s->len);
    }
}

/* Builds and sends q's reply, and frees q. */
static void req_answer(shared_req *q, const sresult *s, enum metrics_xcache x)
{
    proxy_reply out;
    build_reply(&out, q->r, q->req, q->head, s, x);
    q->cb(q->arg, &out);
    proxy_reply_release(&out);
    req_free(q);
}

static void req_answer_error(shared_req *q, const qc_error *e)
{
    sresult s = {0};
    s.err = e;
    s.cache_status = "quotecache; fwd=uri-miss; detail=error";
    req_answer(q, &s, X_BYPASS);
}

/* An answer from a decoded entry (a hit, a STALE one); its fields, in
 * headers, are moved into the answer. */
static void req_answer_decoded(shared_req *q, const skey_entry *e, struct evkeyvalq *headers,
                               enum metrics_xcache x)
{
    sresult s = {0};
    s.status = e->status;
    s.movable = headers;
    s.body = e->body;
    s.len = e->len;
    s.stored_ms = e->stored_ms;
    s.fresh_until_ms = e->fresh_until_ms;
    s.seconds = -1;
    req_answer(q, &s, x);
}

/* The same from its encoding. Returns -1 when it does not decode. */
static int req_answer_entry(shared_req *q, const char *buf, size_t len, enum metrics_xcache x)
{
    struct evkeyvalq h, vv;
    skey_entry e;
    TAILQ_INIT(&h);
    TAILQ_INIT(&vv);
    int rc = skey_entry_decode(buf, len, &e, &h, &vv);
    /* A load's stale copy is the variant of the request that found it;
     * other requests join the flight whatever their Vary fields. */
    if (rc == 0 && !skey_vary_matches(&e, q->req->in))
        rc = -1;
    if (rc == 0)
        req_answer_decoded(q, &e, &h, x);
    hdrlist_clear(&h);
    hdrlist_clear(&vv);
    return rc;
}

/* ---- a request forwarded on its own ---- */

static void on_forwarded(void *arg, const upstream_answer *a)
{
    shared_req *q = arg;
    sresult s = {0};
    struct evkeyvalq h;
    TAILQ_INIT(&h);
    s.err = a->err;
    s.seconds = a->seconds;
    s.cache_status = a->err ? "quotecache; fwd=uri-miss; detail=error" : "quotecache; fwd=uri-miss";
    if (a->err == NULL) {
        proxyhdr_move_all(a->headers, &h);
        s.status = a->status;
        s.h = &h;
        s.bodiless = q->head;
        s.len = evbuffer_get_length(a->body);
        s.body = (const char *)evbuffer_pullup(a->body, -1);
    }
    q->up = NULL;
    req_answer(q, &s, a->err ? X_BYPASS : X_MISS);
    hdrlist_clear(&h);
}

/* Not for the others: q asks the upstream itself (its own fields). */
static void req_forward(shared_req *q)
{
    q->phase = RQ_FORWARDING;
    q->up = upstream_forward(q->sh->up, q->req, on_forwarded, q);
}

/* ---- the load state machine ---- */

static void sl_on_timer(evutil_socket_t fd, short what, void *arg);

static void sl_set_state(sload *ld, enum sl_state to)
{
    enum sl_state from = ld->state;
    if (!(legal_next[from] & B(to))) {
        log_error("shared %s: illegal load transition %s -> %s", ld->k.entry, state_name[from],
                  state_name[to]);
        abort();
    }
    log_debug("shared %s: %s -> %s%s%s", ld->k.entry, state_name[from], state_name[to],
              ld->locked ? " (locked)" : "", ld->local ? " (local)" : "");
    evtimer_del(ld->timer);
    ld->state = to;
    if (to == SL_WAITING) {
        struct timeval tv = {ld->wait_ms / 1000, (ld->wait_ms % 1000) * 1000};
        evtimer_add(ld->timer, &tv);
    }
}

static void sl_unlink(sload *ld)
{
    shared *sh = ld->sh;
    if (ld->prev)
        ld->prev->next = ld->next;
    else
        sh->loads = ld->next;
    if (ld->next)
        ld->next->prev = ld->prev;
}

/* What waiter q gets of the load's end. */
static void wake_one(sload *ld, shared_req *q, const sresult *s)
{
    struct evkeyvalq *in = q->req->in;
    if (s->failed && ld->stale != NULL &&
        req_answer_entry(q, ld->stale, ld->stale_len, X_STALE) == 0)
        return;
    bool same = s->vary_values == NULL || skey_vary_same(s->nvary, s->vary, s->vary_values, in);
    if ((q->leader && s->fetched) || (s->shareable && same)) {
        req_answer(q, s, q->leader && s->fetched ? X_MISS : X_COALESCED);
        return;
    }
    req_forward(q); /* not the first request's to share, or another variant */
}

/* Takes the waiters out of the table, frees the load, then answers each
 * (an answer may start a new flight for the key). */
static void sl_finish(sload *ld, const sresult *s, bool announced)
{
    shared *sh = ld->sh;
    size_t n;
    sl_set_state(ld, SL_DONE);
    flight_waiter *w = flight_take(sh->flights, ld->f, &n);
    flight_free(ld->f);
    sl_unlink(ld);
    if (ld->locked && redis_usable(sh)) {
        rcache_unlock(sh->rc, ld->k.lock, ld->token, NULL, NULL);
        /* Instances waiting on our lock re-check now, not at its expiry. */
        if (!announced)
            rcache_publish(sh->rc, sh->channel, ld->k.entry, NULL, NULL);
    }
    if (ld->up != NULL)
        upstream_cancel(ld->up);
    event_free(ld->timer);
    (void)n;
    while (w != NULL) {
        flight_waiter *next = w->next;
        shared_req *q = (shared_req *)((char *)w - offsetof(shared_req, w));
        wake_one(ld, q, s);
        w = next;
    }
    hdrlist_clear(&ld->hdrs);
    hdrlist_clear(&ld->rh);
    if (ld->body)
        evbuffer_free(ld->body);
    free(ld->stale);
    free(ld->target);
    free(ld);
}

static void sl_finish_error(sload *ld, const qc_error *e)
{
    sresult s = {0};
    s.err = e;
    s.failed = true;
    s.fetched = true;
    s.shareable = true;
    s.cache_status = "quotecache; fwd=uri-miss; detail=error";
    sl_finish(ld, &s, false);
}

static bool shutting_down(sload *ld)
{
    if (!ld->sh->closing)
        return false;
    sl_finish_error(ld, &err_shutdown);
    return true;
}

/* The fetched answer, as the waiters get it. */
static void sl_finish_fetched(sload *ld, bool stored)
{
    sresult s = {0};
    s.status = ld->status;
    s.h = &ld->rh;
    s.len = evbuffer_get_length(ld->body);
    s.body = (const char *)evbuffer_pullup(ld->body, -1);
    s.seconds = ld->seconds;
    s.fetched = true;
    s.failed = ld->status >= 500;
    if (s.failed) {
        httpcache_cc cc;
        httpcache_parse_cc(&ld->rh, &cc);
        s.shareable = !cc.private_ && !cc.no_store && !evhttp_find_header(&ld->rh, "Set-Cookie");
    } else {
        s.shareable = ld->v.store;
    }
    s.nvary = ld->v.nvary;
    s.vary = (const char(*)[64])ld->v.vary;
    s.vary_values = &ld->hdrs;
    s.cache_status = stored ? "quotecache; fwd=uri-miss; stored" : "quotecache; fwd=uri-miss";
    sl_finish(ld, &s, stored);
}

static void sl_fetch(sload *ld);

static void on_refence(void *arg, int status, const rcache_value *v)
{
    sload *ld = arg;
    if (shutting_down(ld))
        return;
    if (status == RCACHE_OK) {
        ld->gen_global = v->gen_global;
        ld->gen_sum = v->gen_product;
    } else {
        ld->local = true;
    }
    sl_fetch(ld);
}

static void on_store(void *arg, int status, long long stored)
{
    sload *ld = arg;
    if (shutting_down(ld))
        return;
    if (status == RCACHE_OK && stored == 0) {
        /* A write moved the counter during the fetch: what we fetched may
         * predate it. Fetch again under the new counter. */
        log_debug("shared %s: store fenced (attempt %d)", ld->k.entry, ld->attempts + 1);
        if (++ld->attempts < MAX_ATTEMPTS && redis_usable(ld->sh) &&
            rcache_read(ld->sh->rc, ld->k.entry, ld->sh->global_key, &ld->gens, on_refence, ld) ==
                0) {
            sl_set_state(ld, SL_REFENCING);
            return;
        }
        sl_finish_fetched(ld, false);
        return;
    }
    sl_finish_fetched(ld, status == RCACHE_OK);
}

static void sl_store(sload *ld)
{
    shared *sh = ld->sh;
    int64_t now = wall_ms();
    skey_entry e = {0};
    e.status = ld->status;
    e.stored_ms = now;
    e.fresh_until_ms = now + ld->v.ttl_s * 1000;
    e.gen_global = ld->gen_global;
    e.gen_sum = ld->gen_sum;
    e.headers = &ld->rh;
    e.nvary = ld->v.nvary;
    memcpy(e.vary, ld->v.vary, sizeof(e.vary));
    e.vary_values = &ld->hdrs;
    e.len = evbuffer_get_length(ld->body);
    e.body = (const char *)evbuffer_pullup(ld->body, -1);
    size_t len;
    char *value = skey_entry_encode(&e, &len);
    int64_t ttl_ms = (ld->v.ttl_s + ld->r->stale_s) * 1000;
    int rc = rcache_store(sh->rc, ld->k.entry, sh->global_key, &ld->gens, ld->gen_global,
                          ld->gen_sum, value, len, ttl_ms, sh->channel, on_store, ld);
    free(value);
    if (rc == 0) {
        sl_set_state(ld, SL_STORING);
        return;
    }
    sl_finish_fetched(ld, false);
}

static void on_fetch(void *arg, const upstream_answer *a)
{
    sload *ld = arg;
    ld->up = NULL;
    if (shutting_down(ld))
        return;
    if (a->err != NULL) {
        sresult s = {0};
        s.err = a->err;
        s.failed = true;
        s.shareable = true; /* our own JSON: nobody's secret */
        s.fetched = true;
        s.seconds = a->seconds;
        s.cache_status = "quotecache; fwd=uri-miss; detail=error";
        sl_finish(ld, &s, false);
        return;
    }
    hdrlist_clear(&ld->rh);
    proxyhdr_move_all(a->headers, &ld->rh);
    evbuffer_drain(ld->body, evbuffer_get_length(ld->body));
    evbuffer_add_buffer(ld->body, a->body);
    ld->status = a->status;
    ld->seconds = a->seconds;
    httpcache_decide(a->status, &ld->hdrs, &ld->rh, true, ld->r->ttl_s, &ld->v);
    if (ld->v.store &&
        !skey_vary_same(ld->v.nvary, (const char(*)[64])ld->v.vary, &ld->hdrs, &ld->hdrs)) {
        ld->v.store = false;
        ld->v.why = "a Vary field sent twice";
    }
    if (ld->v.store && !skey_entry_holds(&ld->rh)) {
        ld->v.store = false;
        ld->v.why = "a field name the entry cannot hold";
    }
    if (!ld->v.store)
        log_debug("shared %s: not stored (%s)", ld->k.entry, ld->v.why);
    if (!ld->v.store || ld->local || !redis_usable(ld->sh)) {
        sl_finish_fetched(ld, false);
        return;
    }
    sl_store(ld);
}

static void sl_fetch(sload *ld)
{
    sl_set_state(ld, SL_FETCHING);
    ld->up =
        upstream_fetch(ld->sh->up, ld->target, &ld->hdrs, ld->peer, ld->request_id, on_fetch, ld);
}

/* ---- waiting for another instance ---- */

/* A current, fresh entry answers the load (another instance stored it). */
static bool sl_answer_from_entry(sload *ld, const rcache_value *v)
{
    struct evkeyvalq h, vv;
    skey_entry e;
    TAILQ_INIT(&h);
    TAILQ_INIT(&vv);
    bool ok = v->entry != NULL && skey_entry_decode(v->entry, v->entry_len, &e, &h, &vv) == 0 &&
              entry_current(&e, v) && wall_ms() < e.fresh_until_ms &&
              skey_vary_matches(&e, &ld->hdrs); /* another variant: fetch ours */
    if (ok) {
        sresult s = {0};
        s.status = e.status;
        s.h = &h;
        s.body = e.body;
        s.len = e.len;
        s.shareable = true;
        s.stored_ms = e.stored_ms;
        s.fresh_until_ms = e.fresh_until_ms;
        s.nvary = e.nvary;
        s.vary = (const char(*)[64])e.vary;
        s.vary_values = &ld->hdrs; /* vv holds digests; ld's request matched them */
        s.seconds = -1;
        s.cache_status = "quotecache; fwd=uri-miss; collapsed";
        sl_finish(ld, &s, true);
    }
    hdrlist_clear(&h);
    hdrlist_clear(&vv);
    return ok;
}

static void new_token(sload *ld)
{
    unsigned char raw[16];
    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        log_error("shared: RAND_bytes failed");
        abort();
    }
    hex_bytes(raw, sizeof(raw), ld->token);
}

static void on_check(void *arg, int status, const rcache_lock_value *lv);

static void sl_remote_read(sload *ld)
{
    shared *sh = ld->sh;
    new_token(ld);
    if (!redis_usable(sh) ||
        rcache_check(sh->rc, ld->k.lock, ld->token, sh->lock_ttl_ms, ld->k.entry, sh->global_key,
                     &ld->gens, on_check, ld) < 0) {
        ld->local = true; /* Redis went away while we waited */
        sl_fetch(ld);
        return;
    }
    sl_set_state(ld, SL_CHECKING);
}

static void sl_on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sload *ld = arg;
    if (ld->state == SL_WAITING)
        sl_remote_read(ld);
}

/* What a lock attempt and a re-check have in common. True: settled. */
static bool sl_take_lock_answer(sload *ld, int status, const rcache_lock_value *lv)
{
    if (lv != NULL && lv->acquired)
        ld->locked = true;
    if (shutting_down(ld))
        return true;
    if (status != RCACHE_OK) {
        ld->local = true;
        sl_fetch(ld);
        return true;
    }
    ld->gen_global = lv->v.gen_global;
    ld->gen_sum = lv->v.gen_product;
    if (sl_answer_from_entry(ld, &lv->v))
        return true;
    if (lv->acquired) {
        sl_fetch(ld);
        return true;
    }
    return false;
}

static void sl_wait(sload *ld, int64_t pttl)
{
    int64_t ms = pttl >= 0 ? pttl : ld->sh->lock_ttl_ms;
    ld->wait_ms = (int)ms + REMOTE_SLACK_MS;
    sl_set_state(ld, SL_WAITING);
}

static void on_check(void *arg, int status, const rcache_lock_value *lv)
{
    sload *ld = arg;
    if (!sl_take_lock_answer(ld, status, lv))
        sl_wait(ld, lv->lock_pttl);
}

static void on_lock(void *arg, int status, const rcache_lock_value *lv)
{
    sload *ld = arg;
    if (sl_take_lock_answer(ld, status, lv))
        return;
    sl_wait(ld, lv->lock_pttl);
}

void shared_on_message(shared *sh, const char *msg, size_t len)
{
    if (msg == NULL) {
        /* The subscriber is back: announcements may have been missed. */
        shot_drop_all(sh->hot);
        sload *next;
        for (sload *ld = sh->loads; ld != NULL; ld = next) {
            next = ld->next;
            if (ld->state == SL_WAITING)
                sl_remote_read(ld);
        }
        return;
    }
    char key[KEY_MAX];
    if (len >= KEY_MAX)
        return;
    memcpy(key, msg, len);
    key[len] = '\0';
    flight *f = flight_find(sh->flights, key);
    if (f == NULL)
        return;
    sload *ld = flight_owner(f);
    if (ld->state == SL_WAITING)
        sl_remote_read(ld);
}

/* The load's fallback copy, of counter gen. */
static void sl_keep_stale(sload *ld, const char *stale, size_t stale_len, uint64_t gen)
{
    ld->stale = xmalloc(stale_len);
    memcpy(ld->stale, stale, stale_len);
    ld->stale_len = stale_len;
    ld->stale_gen = gen;
}

/* The first request's fields a fetch for every waiter leaves out: its
 * validators, which we answer from the fetched copy (an upstream 304 has
 * nothing to store or share: each waiter then asked on its own), and its
 * range (a 206 neither; a whole answer to a range is allowed). */
static bool fetch_skips(const char *name)
{
    static const char *const skip[] = {"If-None-Match", "If-Modified-Since", "Range", "If-Range"};
    for (size_t i = 0; i < sizeof(skip) / sizeof(skip[0]); i++) {
        if (strcasecmp(name, skip[i]) == 0)
            return true;
    }
    return false;
}

/* Starts the flight of q's key and its load, whose first step is sent. */
static void sl_start(shared *sh, shared_req *q, const char *stale, size_t stale_len, uint64_t gen)
{
    sload *ld = xcalloc(1, sizeof(*ld));
    ld->sh = sh;
    ld->r = q->r;
    ld->k = q->k;
    scope_keys_one(&ld->gens, ld->k.gen);
    ld->target = xstrdup(q->target);
    TAILQ_INIT(&ld->hdrs);
    TAILQ_INIT(&ld->rh);
    ld->body = evbuffer_new();
    struct evkeyvalq *in = q->req->in;
    for (const struct evkeyval *kv = in->tqh_first; kv; kv = kv->next.tqe_next) {
        if (!fetch_skips(kv->key))
            hdrlist_add(&ld->hdrs, kv->key, kv->value);
    }
    snprintf(ld->peer, sizeof(ld->peer), "%s", q->req->peer);
    const char *id = evhttp_find_header(q->req->out, "X-Request-Id");
    snprintf(ld->request_id, sizeof(ld->request_id), "%s", id ? id : "");
    if (stale != NULL)
        sl_keep_stale(ld, stale, stale_len, gen);
    ld->timer = evtimer_new(sh->base, sl_on_timer, ld);
    ld->f = flight_start(sh->flights, ld->k.entry);
    flight_set_owner(ld->f, ld);
    ld->next = sh->loads;
    if (sh->loads)
        sh->loads->prev = ld;
    sh->loads = ld;
    if (flight_join(sh->flights, ld->f, &q->w) == 0) {
        q->leader = true;
        q->phase = RQ_WAITING;
    } else {
        req_forward(q); /* the table is full: the load still fills the cache */
    }
    if (redis_usable(sh)) {
        new_token(ld);
        if (rcache_lock_read(sh->rc, ld->k.lock, ld->token, sh->lock_ttl_ms, ld->k.entry,
                             sh->global_key, &ld->gens, on_lock, ld) == 0) {
            sl_set_state(ld, SL_LOCKING);
            return;
        }
    }
    ld->local = true;
    sl_fetch(ld);
}

/* ---- requests ---- */

/* q joins its key's flight, or starts it; or, past the waiter bounds,
 * asks the upstream itself. stale: a copy for the load to fall back on.
 * gen: the counters q read, global + resource sum (0: none read). */
static void req_wait(shared_req *q, const char *stale, size_t stale_len, uint64_t gen)
{
    shared *sh = q->sh;
    flight *f = flight_find(sh->flights, q->k.entry);
    if (f == NULL) {
        sl_start(sh, q, stale, stale_len, gen);
        return;
    }
    sload *ld = flight_owner(f);
    if (ld->stale != NULL && gen > ld->stale_gen) {
        /* A write was acknowledged since the load kept its copy: q came
         * after it, and neither q nor anyone later may be served it. */
        free(ld->stale);
        ld->stale = NULL;
    }
    if (flight_join(sh->flights, f, &q->w) < 0) {
        req_forward(q);
        return;
    }
    q->phase = RQ_WAITING;
    if (stale != NULL && ld->stale == NULL)
        sl_keep_stale(ld, stale, stale_len, gen);
}

static void reading_unlink(shared_req *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        q->sh->reading = q->next;
    if (q->next)
        q->next->prev = q->prev;
    q->next = q->prev = NULL;
}

/* What the read found: a fresh entry of the current generation whose
 * Vary fields match answers; one past freshness but within the stale
 * horizon goes to the load as its fallback. */
static void on_read(void *arg, int status, const rcache_value *v)
{
    shared_req *q = arg;
    reading_unlink(q);
    if (q->req == NULL) { /* the client left meanwhile */
        req_free(q);
        return;
    }
    if (q->sh->closing) {
        req_answer_error(q, &err_shutdown);
        return;
    }
    struct evkeyvalq h, vv;
    skey_entry e;
    TAILQ_INIT(&h);
    TAILQ_INIT(&vv);
    const char *stale = NULL;
    if (status == RCACHE_OK && v->entry != NULL &&
        skey_entry_decode(v->entry, v->entry_len, &e, &h, &vv) == 0 && entry_current(&e, v) &&
        skey_vary_matches(&e, q->req->in)) {
        int64_t now = wall_ms();
        if (now < e.fresh_until_ms) {
            if (hot_usable(q->sh))
                shot_put(q->sh->hot, q->canon, q->stamp, &e, &h, q->req->in, now, mono_ms());
            req_answer_decoded(q, &e, &h, X_HIT);
            hdrlist_clear(&h);
            hdrlist_clear(&vv);
            return;
        }
        stale = v->entry;
    }
    hdrlist_clear(&h);
    hdrlist_clear(&vv);
    /* Both counters only grow: their sum moves whenever a write (or a
     * global bump) happened since. */
    req_wait(q, stale, stale ? v->entry_len : 0,
             status == RCACHE_OK ? v->gen_global + v->gen_product : 0);
}

/* The canonical request of req on r (canon: SKEY_CANON_MAX bytes), the
 * query toward the upstream and its resource. Returns 0 or -1 (not
 * cacheable: skey_canonical). */
static int canonical_of(const route *r, http_req *req, const char *path, char *canon,
                        char fwd[TARGET_MAX], char res[SKEY_RESOURCE_MAX])
{
    const char *uri = req->target;
    const char *query = strchr(uri, '?');
    if (skey_canonical(r, path, query ? query + 1 : NULL, req->in, canon, SKEY_CANON_MAX, fwd,
                       TARGET_MAX) < 0)
        return -1;
    return skey_resource(r, path, res, SKEY_RESOURCE_MAX);
}

bool shared_try_hot(shared *sh, const route *r, http_req *req, const char *path, proxy_reply *out)
{
    struct evkeyvalq *in = req->in;
    if (!hot_usable(sh) || proxyhdr_wants_origin(in))
        return false;
    /* On the stack: an 8 KB malloc and free were 3 % of a hit. */
    char canon[SKEY_CANON_MAX], fwd[TARGET_MAX], res[SKEY_RESOURCE_MAX];
    const lcache_entry *e = NULL;
    int64_t now = wall_ms();
    if (canonical_of(r, req, path, canon, fwd, res) == 0)
        e = shot_get(sh->hot, canon, shot_stamp(sh->hot, res), in, now, mono_ms());
    if (e == NULL)
        return false;
    sresult s = {0};
    s.status = e->status;
    s.h = e->headers;
    s.body = e->body;
    s.len = e->len;
    s.stored_ms = e->stored_ms;
    s.fresh_until_ms = e->fresh_until_ms;
    s.seconds = -1;
    build_reply(out, r, req, req->method == EVHTTP_REQ_HEAD, &s, X_HIT);
    return true;
}

shared_req *shared_get(shared *sh, const route *r, http_req *req, const char *path, proxy_cb *cb,
                       void *arg)
{
    if (sh->closing || proxyhdr_wants_origin(req->in))
        return NULL;
    char *canon = xmalloc(SKEY_CANON_MAX), fwd[TARGET_MAX], res[SKEY_RESOURCE_MAX];
    if (canonical_of(r, req, path, canon, fwd, res) < 0) {
        free(canon);
        return NULL;
    }
    shared_req *q = xcalloc(1, sizeof(*q));
    if (skey_keys_of(&q->k, sh->version, r->name, res, canon) < 0) {
        free(canon);
        free(q);
        return NULL;
    }
    q->sh = sh;
    q->r = r;
    q->req = req;
    q->cb = cb;
    q->arg = arg;
    q->head = req->method == EVHTTP_REQ_HEAD;
    q->canon = xstrdup(canon);
    q->stamp = shot_stamp(sh->hot, res); /* before the read: see sharedhot.h */
    free(canon);
    size_t tl = strlen(path) + 1 + strlen(fwd) + 1;
    q->target = xmalloc(tl);
    snprintf(q->target, tl, "%s%s%s", path, fwd[0] ? "?" : "", fwd);
    scope_keys gens;
    scope_keys_one(&gens, q->k.gen);
    if (redis_usable(sh) &&
        rcache_read(sh->rc, q->k.entry, sh->global_key, &gens, on_read, q) == 0) {
        q->phase = RQ_READING;
        q->next = sh->reading;
        if (sh->reading)
            sh->reading->prev = q;
        sh->reading = q;
    } else {
        req_wait(q, NULL, 0, 0); /* never answers before returning: fetches take a loop turn */
    }
    return q;
}

void shared_cancel(shared_req *q)
{
    switch (q->phase) {
    case RQ_READING:
        q->req = NULL; /* the read answers into it, then frees it */
        return;
    case RQ_WAITING:
        flight_leave(q->sh->flights, &q->w);
        break;
    case RQ_FORWARDING:
        upstream_cancel(q->up);
        break;
    }
    req_free(q);
}

/* ---- writes ---- */

typedef struct inval {
    shared_done_cb *done;
    void *arg;
    int pending;
    bool sending; /* answers are counted once every bump is sent */
    bool failed;  /* a bump was not acknowledged */
} inval;

static void inval_settle(inval *iv)
{
    if (iv->pending > 0 || iv->sending)
        return;
    if (iv->done)
        iv->done(iv->arg, !iv->failed);
    free(iv);
}

static void on_bumped(void *arg, int status, long long value)
{
    (void)value;
    inval *iv = arg;
    iv->failed |= status != RCACHE_OK;
    if (status != RCACHE_OK)
        log_warn("shared: a write's invalidation was not acknowledged by Redis; owed, paid "
                 "by a global bump once Redis answers again");
    iv->pending--;
    inval_settle(iv);
}

typedef struct inval_walk {
    shared *sh;
    inval *iv;
} inval_walk;

static void bump_resource(void *arg, const route *r, const char *resource)
{
    inval_walk *w = arg;
    char key[KEY_MAX];
    if (skey_gen_key(key, w->sh->version, r->name, resource) < 0)
        return;
    log_debug("shared: write bumps %s", key);
    shot_drop_resource(w->sh->hot, resource); /* here at once; elsewhere on its announcement */
    /* Unique: a copy fenced on a lost counter's value never matches its
     * successor (a lost counter would start again at 1). A bump Redis may
     * not have applied is owed, and the global bump that pays it drops
     * shared copies too (they record the global generation). */
    if (rcache_incr_unique(w->sh->rc, key, on_bumped, w->iv) == 0)
        w->iv->pending++;
}

static void drop_resource(void *arg, const route *r, const char *resource)
{
    (void)r;
    shot_drop_resource(arg, resource);
}

void shared_on_write(shared *sh, const routes *rt, const char *wpath)
{
    skey_write_resources(rt, wpath, ROUTE_SHARED, drop_resource, sh->hot);
}

void shared_drop_copies(shared *sh)
{
    shot_drop_all(sh->hot);
}

int shared_invalidate(shared *sh, const routes *rt, const char *wpath, shared_done_cb *done,
                      void *arg)
{
    if (sh->rc == NULL || sh->closing)
        return 0; /* (with Redis down, rcache_bump refuses each bump and owes it) */
    inval *iv = xcalloc(1, sizeof(*iv));
    iv->done = done;
    iv->arg = arg;
    iv->sending = true;
    inval_walk w = {sh, iv};
    skey_write_resources(rt, wpath, ROUTE_SHARED, bump_resource, &w);
    int n = iv->pending;
    iv->sending = false;
    if (n == 0) {
        free(iv);
        return 0;
    }
    return n;
}

/* ---- life ---- */

shared *shared_new(struct event_base *base, upstream *up, rcache *rc, const char *version,
                   int lock_ttl_ms, int upstream_timeout_ms)
{
    shared *sh = xcalloc(1, sizeof(*sh));
    sh->base = base;
    sh->up = up;
    sh->rc = rc;
    snprintf(sh->version, sizeof(sh->version), "%s", version);
    snprintf(sh->channel, sizeof(sh->channel), "qc:%s:routes", version);
    key_global_gen(sh->global_key, version);
    /* The lock must outlive a fetch, or a second instance fetches too. */
    sh->lock_ttl_ms =
        lock_ttl_ms > upstream_timeout_ms + 1000 ? lock_ttl_ms : upstream_timeout_ms + 1000;
    sh->flights = flight_table_new(WAITERS_PER_KEY, WAITERS_TOTAL);
    sh->hot = shot_new(HOT_BYTES);
    return sh;
}

const char *shared_channel(const shared *sh)
{
    return sh->channel;
}

void shared_close(shared *sh)
{
    if (sh != NULL)
        sh->closing = true;
}

void shared_free(shared *sh)
{
    if (sh == NULL)
        return;
    sh->closing = true;
    while (sh->loads != NULL)
        sl_finish_error(sh->loads, &err_shutdown);
    /* Reads still in flight belong to the rcache, freed before us: their
     * callbacks have run (rcache_free answers them). */
    flight_table_free(sh->flights);
    shot_free(sh->hot);
    free(sh);
}
