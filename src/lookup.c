/* lookup: the request side of the lookup module: owns each request
 * (lookup_req) from lookup_quote until its single answer or lookup_cancel,
 * the in-process tier and the local invalidation counters. The loads are
 * load.c's (lookup_int.h is what the two share); freshness rules are
 * fresh.c's. See lookup.h for the contract.
 *
 * A request: read Redis (MGET of the two generation counters and the entry)
 * -> hit: answer; stale: answer STALE and make sure a refresh runs;
 * miss: join the key's flight, or start one and become its first waiter.
 * When the load finishes each waiter is judged on its own (lookup_wake):
 * the stale copy of a failed load only if it may still be served now, a
 * no-cache waiter sent back to wait for a later load if this one may
 * predate its write. A request whose client leaves is detached
 * (lookup_cancel) and drops out of its flight at once; the load goes on. */
#include "lookup_int.h"

#include <stdlib.h>
#include <string.h>

#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/quote.h"

#define HOT_SLOTS 16384
#define HOT_MAX_VALUE 8192 /* a quote with every bound full is ~5 KB */

static void req_wait(lk_req *q, const fresh_gens *g, const char *stale, size_t stale_len,
                     uint64_t stale_local);

/* Keeps a copy in the in-process tier under the local generation stamp at
 * which it was read (or its load began); nothing when a local invalidation
 * came since. With Redis a copy is kept HOT_REDIS_MS at most; without, until
 * its horizon (it is then the cache, and serves STALE too). */
void lookup_hot_keep(lookup *lk, const hot_req *k, const char *key, const char *value, size_t len,
                     const envelope *e, uint64_t stamp)
{
    if (stamp != local_gen_of(lk, k->r))
        return;
    int64_t until = fresh_horizon_ms(&lk->policy, e);
    if (lk->rc != NULL) {
        int64_t soon = wall_ms() + HOT_REDIS_MS;
        until = fresh_until_ms(&lk->policy, e);
        until = until < soon ? until : soon;
    }
    hot_put(lk->hot, k, key, value, len, stamp, until);
}

/* ---- answering requests ---- */

static void req_release(lk_req *q)
{
    if (q->ev)
        event_free(q->ev);
    q->lk->pending--;
    free(q);
}

/* A detached request (its client left) is only released. */
static void req_answer(lk_req *q, const lookup_answer *a)
{
    lookup_cb *cb = q->cb;
    void *arg = q->arg;
    req_release(q);
    if (cb != NULL)
        cb(arg, a);
}

static void req_answer_error(lk_req *q, int status, const char *code, const char *msg,
                             int retry_after)
{
    size_t len;
    char *body = quote_render_error(code, msg, &len);
    lookup_answer a = {status, body, len, NULL, X_NONE, retry_after, 0, NULL};
    req_answer(q, &a);
    free(body);
}

static void req_answer_envelope(lk_req *q, const envelope *e, const char *body, size_t len,
                                enum metrics_xcache x)
{
    lookup_answer a = {e->status,       body, len, e->status == 200 ? e->etag : NULL, x, 0,
                       e->stored_at_ms, NULL};
    req_answer(q, &a);
}

/* Read your own write: a no-cache request that arrived after this load sent
 * its query may be asking because of a write the query did not see. */
static bool req_needs_later_load(const lk_req *q, const load_outcome *o, const lookup_answer *a)
{
    if (!q->no_cache || q->lk->closing)
        return false;
    if (a->xcache == X_MISS || a->xcache == X_BYPASS)
        return fresh_needs_later_load(q->arrived_us, o->origin_us);
    /* A value another instance loaded: its envelope says when that began. */
    return a->xcache == X_COALESCED && fresh_needs_later_load(q->arrived_ms, o->remote_began_ms);
}

static void req_rewait(lk_req *q, const load_outcome *o)
{
    event_free(q->ev);
    q->ev = NULL;
    q->leader = false;
    req_wait(q, o->local ? NULL : &o->gens, NULL, 0, 0);
}

/* The stale copy of a failed load, if q may be given it now: judged at the
 * moment of serving and for each waiter, never past the horizon, never
 * after a write or purge superseded it (in Redis, as the load or the
 * waiter's own read last saw the counters, or here). */
static bool req_may_take_stale(const lk_req *q, const load_outcome *o, const envelope *e)
{
    const lookup *lk = q->lk;
    if (q->no_cache)
        return false; /* it asked for the origin's answer: never a stored copy */
    int64_t now = wall_ms();
    uint64_t local_now = local_gen_of(lk, &q->r); /* same key: same scopes as the load's */
    if (!fresh_may_serve_stale(&lk->policy, e, o->gens, o->stale_local, local_now, now))
        return false;
    return !q->has_gens ||
           fresh_may_serve_stale(&lk->policy, e, q->gens, o->stale_local, local_now, now);
}

/* Takes each waiter of a finished load off the list, then answers it: an
 * answer may start a new flight for the same key (the list is out of the
 * table already). */
void lookup_wake(flight_waiter *w, const lookup_answer *a, const load_outcome *o)
{
    envelope se;
    const char *sbody;
    size_t slen;
    bool have_stale =
        o->stale != NULL && envelope_decode(o->stale, o->stale_len, &se, &sbody, &slen) == 0;
    while (w != NULL) {
        flight_waiter *next = w->next;
        lk_req *q = (lk_req *)((char *)w - offsetof(lk_req, w));
        w = next;
        if (have_stale && req_may_take_stale(q, o, &se)) {
            req_answer_envelope(q, &se, sbody, slen, X_STALE);
            continue;
        }
        if (req_needs_later_load(q, o, a)) {
            req_rewait(q, o);
            continue;
        }
        lookup_answer mine = *a;
        /* Everyone but the request that started the load waited on it. */
        if (!q->leader && (a->xcache == X_MISS || a->xcache == X_BYPASS))
            mine.xcache = X_COALESCED;
        if (mine.xcache == X_COALESCED) {
            metrics_inc(M_COALESCED);
            metrics_observe_us(H_COALESCED_WAIT, 0, mono_us() - q->joined_us);
        }
        req_answer(q, &mine);
    }
}

/* ---- requests ---- */

static void on_waiter_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lk_req *q = arg;
    flight_leave(q->lk->flights, &q->w);
    metrics_gauge_add(G_WAITERS, -1);
    req_answer_error(q, 503, "load_timeout", "the quote could not be loaded in time", 1);
}

/* Joins the key's flight, starting it (and its load) when there is none.
 * g: the counters Redis returned (NULL when Redis is not in use). stale: an
 * expired copy (envelope bytes, read at local generation stale_local) the
 * load may serve if the origin fails. */
static void req_wait(lk_req *q, const fresh_gens *g, const char *stale, size_t stale_len,
                     uint64_t stale_local)
{
    lookup *lk = q->lk;
    flight *f = flight_find(lk->flights, q->key);
    load *started = NULL;
    if (q->cb == NULL) {
        /* Its client left before it could join: the load it would have
         * started still runs and fills the cache, with nobody waiting. */
        if (f == NULL)
            load_begin(load_start(lk, q, g, NULL, 0, 0));
        req_release(q);
        return;
    }
    if (g != NULL) {
        q->gens = *g;
        q->has_gens = true;
    }
    if (f == NULL) {
        started = load_start(lk, q, g, stale, stale_len, stale_local);
        f = flight_find(lk->flights, q->key);
        q->leader = true;
    }
    if (flight_join(lk->flights, f, &q->w) < 0) {
        metrics_inc(M_WAITERS_REJECTED);
        if (!lk->warned_waiters)
            log_warn("lookup %s: waiter bound reached; refusing with 503 (logged once)", q->key);
        lk->warned_waiters = true;
        req_answer_error(q, 503, "too_many_waiters", "too many requests are waiting for this quote",
                         1);
    } else {
        q->phase = REQ_WAITING;
        q->joined_us = mono_us();
        load_join(flight_owner(f), q);
        metrics_gauge_add(G_WAITERS, 1);
        const qc_config *cfg = lk->cfg;
        int ms = cfg->lock_ttl_ms + cfg->pg_timeout_ms + cfg->tax_timeout_ms + 1000;
        struct timeval tv = ms_tv(ms);
        q->ev = evtimer_new(lk->base, on_waiter_deadline, q);
        evtimer_add(q->ev, &tv);
    }
    if (started)
        load_begin(started);
}

/* Serves a stale copy now and makes sure a refresh is running. */
static void req_serve_stale(lk_req *q, const fresh_gens *g, const char *value, size_t len)
{
    lookup *lk = q->lk;
    envelope e;
    const char *body;
    size_t blen;
    envelope_decode(value, len, &e, &body, &blen);
    if (flight_find(lk->flights, q->key) == NULL)
        load_begin(load_start(lk, q, g, value, len, q->stamp));
    req_answer_envelope(q, &e, body, blen, X_STALE);
}

static void on_read(void *arg, int status, const rcache_value *v)
{
    lk_req *q = arg;
    lookup *lk = q->lk;
    if (lk->closing) {
        req_answer_error(q, 503, "shutting_down", "the proxy is shutting down", 0);
        return;
    }
    if (status != RCACHE_OK) {
        req_wait(q, NULL, NULL, 0, 0);
        return;
    }
    envelope e;
    const char *body;
    size_t len;
    fresh_gens g = gens_of(v);
    int64_t now = wall_ms();
    bool decoded =
        v->entry != NULL && envelope_decode(v->entry, v->entry_len, &e, &body, &len) == 0;
    if (decoded && !q->no_cache && fresh_is_current(&lk->policy, &e, g, now)) {
        hot_req k = hot_req_of(q);
        lookup_hot_keep(lk, &k, q->key, v->entry, v->entry_len, &e, q->stamp);
        req_answer_envelope(q, &e, body, len, X_HIT);
        return;
    }
    bool stale_ok = decoded && fresh_may_serve_stale(&lk->policy, &e, g, q->stamp,
                                                     local_gen_of(lk, &q->r), now);
    if (stale_ok && !q->no_cache && fresh_stale_while_revalidate(&lk->policy)) {
        req_serve_stale(q, &g, v->entry, v->entry_len);
        return;
    }
    /* A no-cache leader keeps the copy for the others that join it. */
    req_wait(q, &g, stale_ok ? v->entry : NULL, v->entry_len, q->stamp);
}

/* --redis none: the in-process tier is the cache, kept to the horizon. A
 * current copy is a HIT (lookup_quote_hot answers most of them before
 * lookup_quote), a stale one is served STALE while one refresh runs, like
 * the Redis mode. Returns false when there is no usable copy (a no-cache
 * request never uses one). */
static bool req_from_process(lk_req *q)
{
    lookup *lk = q->lk;
    int64_t now = wall_ms();
    hot_req k = hot_req_of(q);
    const hot_entry *he = q->no_cache ? NULL : hot_get(lk->hot, &k, q->stamp, now);
    if (he == NULL)
        return false;
    envelope e = he->env;
    fresh_gens g = {e.gen_global, e.gen_product}; /* no counters: the stamp fences */
    if (fresh_is_current(&lk->policy, &e, g, now)) {
        metrics_inc(M_HOT_HITS);
        req_answer_envelope(q, &e, he->body, he->body_len, X_HIT);
        return true;
    }
    if (!fresh_may_serve_stale(&lk->policy, &e, g, q->stamp, q->stamp, now))
        return false;
    size_t vlen = he->len;
    char *copy = xmalloc(vlen); /* hot_put may replace the entry as the load starts */
    memcpy(copy, he->value, vlen);
    if (fresh_stale_while_revalidate(&lk->policy))
        req_serve_stale(q, NULL, copy, vlen);
    else
        req_wait(q, NULL, copy, vlen, q->stamp); /* the copy only if the refresh fails */
    free(copy);
    return true;
}

/* Without Redis the request still coalesces in process; the answer must
 * come later, so the flight is joined from a zero-delay event. */
static void on_deferred(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lk_req *q = arg;
    event_free(q->ev);
    q->ev = NULL;
    if (q->lk->closing) {
        req_answer_error(q, 503, "shutting_down", "the proxy is shutting down", 0);
        return;
    }
    if (q->too_many_promos) {
        req_answer_error(q, 500, "too_many_promotions",
                         "more promotions apply to this quote than the proxy can key", 0);
        return;
    }
    if (q->lk->rc == NULL && req_from_process(q))
        return;
    req_wait(q, NULL, NULL, 0, 0);
}

lookup_req *lookup_quote(lookup *lk, const quote_req *r, bool no_cache, lookup_cb *cb, void *arg)
{
    const promo_set *set = catalog_promo_set(lk->cat, r->product_id, r->region, wall_ms());
    size_t npromos = set->n > 0 ? (size_t)set->n : 0;
    lk_req *q = xcalloc(1, sizeof(*q) + npromos * sizeof(int64_t));
    q->lk = lk;
    q->r = *r;
    q->no_cache = no_cache;
    q->arrived_us = no_cache ? mono_us() : 0;
    q->arrived_ms = no_cache ? wall_ms() : 0;
    q->cb = cb;
    q->arg = arg;
    lk->pending++;
    q->npromos = npromos;
    q->too_many_promos = set->n < 0;
    q->promo_hash = set->hash;
    if (q->npromos > 0)
        memcpy(q->promos, set->ids, q->npromos * sizeof(int64_t));
    key_entry(q->key, lk->cfg->key_version, r, q->promos, q->npromos);
    q->stamp = local_gen_of(lk, r);
    scope_keys gens;
    scope_keys_of(&gens, lk->cfg->key_version, r);
    q->phase = REQ_READING;
    if (!q->too_many_promos && redis_usable(lk) &&
        rcache_read(lk->rc, q->key, lk->gen_global_key, &gens, on_read, q) == 0)
        return q;
    q->phase = REQ_DEFERRED;
    q->ev = event_new(lk->base, -1, 0, on_deferred, q);
    event_active(q->ev, EV_TIMEOUT, 1);
    return q;
}

void lookup_cancel(lookup_req *q)
{
    switch (q->phase) {
    case REQ_READING:
    case REQ_DEFERRED:
        /* The read (or the deferred join) holds q and goes on, detached:
         * a miss still starts the load, so the cache is filled. */
        q->cb = NULL;
        return;
    case REQ_WAITING:
        flight_leave(q->lk->flights, &q->w);
        metrics_gauge_add(G_WAITERS, -1);
        req_release(q);
        return;
    }
}

void lookup_redis_down(lookup *lk)
{
    load_redis_down(lk);
}

void lookup_redis_up(lookup *lk)
{
    load_redis_up(lk);
}

bool lookup_quote_hot(lookup *lk, const quote_req *r, int64_t now_ms, lookup_answer *a)
{
    /* With Redis configured but away, answers are BYPASS loads: the copies
     * here were vouched for by Redis, which can no longer say otherwise. */
    if (lk->rc != NULL && !rcache_is_up(lk->rc))
        return false;
    const promo_set *set = catalog_promo_set(lk->cat, r->product_id, r->region, now_ms);
    if (set->n < 0)
        return false;
    hot_req k = {r, set->ids, (size_t)set->n, set->hash};
    const hot_entry *e = hot_get(lk->hot, &k, local_gen_of(lk, r), now_ms);
    if (e == NULL || now_ms >= fresh_until_ms(&lk->policy, &e->env))
        return false;
    lookup_answer hit = {
        e->env.status, e->body, e->body_len,         e->env.status == 200 ? e->env.etag : NULL,
        X_HIT,         0,       e->env.stored_at_ms, e};
    *a = hit;
    metrics_inc(M_HOT_HITS);
    return true;
}

/* ---- invalidation, life cycle ---- */

void lookup_invalidate_product(lookup *lk, int64_t product_id)
{
    lk->local_gen[(uint64_t)product_id % LOCAL_GENS]++;
}

void lookup_invalidate_scope(lookup *lk, const scope *s)
{
    if (s->kind == SCOPE_PRODUCT)
        lookup_invalidate_product(lk, s->product_id);
    else
        lk->local_scope[scope_bucket(s, LOCAL_SCOPES)]++;
}

void lookup_set_trust(lookup *lk, int64_t trust_ms)
{
    lk->policy.trust_ms = trust_ms;
}

void lookup_invalidate_all(lookup *lk)
{
    lk->local_gen_all++;
}

size_t lookup_pending(const lookup *lk)
{
    return lk->pending;
}

lookup *lookup_new(struct event_base *base, const qc_config *cfg, pgpool *pool, tax_client *tax,
                   catalog *cat, rcache *rc)
{
    lookup *lk = xcalloc(1, sizeof(*lk));
    lk->base = base;
    lk->cfg = cfg;
    lk->policy.ttl_ms = (int64_t)cfg->ttl_s * 1000;
    lk->policy.neg_ttl_ms = (int64_t)cfg->neg_ttl_s * 1000;
    lk->policy.stale_ms = (int64_t)cfg->stale_ttl_s * 1000;
    lk->pool = pool;
    lk->tax = tax;
    lk->cat = cat;
    lk->rc = rc;
    lk->flights = flight_table_new((size_t)cfg->max_waiters_per_key, (size_t)cfg->max_waiters);
    lk->hot = hot_new(HOT_SLOTS, HOT_MAX_VALUE);
    key_global_gen(lk->gen_global_key, cfg->key_version);
    key_channel(lk->channel, cfg->key_version);
    if (rc != NULL)
        rcache_subscribe(rc, lk->channel, load_on_message, lk);
    load_log_lease(lk);
    return lk;
}

void lookup_close(lookup *lk)
{
    lk->closing = true;
    /* The rcache is freed next: from here on nothing may call into it. */
    lk->rc = NULL;
}

void lookup_free(lookup *lk)
{
    if (lk == NULL)
        return;
    lk->closing = true;
    /* Loads with nothing in flight (waiting on another instance) are
     * answered here; the others were answered by their backends' shutdown. */
    while (lk->loads != NULL)
        load_abort(lk->loads);
    flight_table_free(lk->flights);
    hot_free(lk->hot);
    free(lk);
}
