/* lookup: owns the per-request lookup state (lk_req) and the per-key loads
 * (load, the owner of a flight). See lookup.h for the contract.
 *
 * A request: read Redis (MGET of the two generation counters and the entry)
 * -> hit: answer; stale: answer STALE and make sure a refresh runs;
 * miss: join the key's flight, or start one and become its first waiter.
 *
 * A load: take the Redis lock (SET NX PX) -> won: load from the origin,
 * store through the fenced script (which also announces the key), release
 * the lock, wake the waiters. Lost: wait for the announcement on the shared
 * subscriber connection, with a re-check at the lock's deadline; a lock that
 * expired without a value is taken over (SET NX again: exactly one wins).
 * Without Redis the same load runs in process only.
 *
 * Fencing: a load remembers the generations it started under (Redis
 * counters, and a local counter bumped by invalidations seen by this
 * instance). If either moved when the result arrives, what it read may
 * predate a write: it reloads instead of storing or serving it. */
#include "quotecache/lookup.h"

#include <event2/event.h>
#include <inttypes.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "quotecache/flight.h"
#include "quotecache/hot.h"
#include "quotecache/key.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/origin.h"
#include "quotecache/quote.h"

#define LOCAL_GENS 4096 /* local invalidation counters, by product id hash */
#define MAX_ATTEMPTS 3  /* loads of one flight fenced by concurrent writes */
#define HOT_SLOTS 16384
#define HOT_MAX_VALUE 8192 /* a quote with every bound full is ~5 KB */
/* With Redis, how long a copy in process is served without asking Redis.
 * Changes reach the in-process tier through the local generations (LISTEN
 * carries both database changes and admin purges); this bounds the rest,
 * e.g. a purge made while PostgreSQL was away, seen only in Redis. */
#define HOT_REDIS_MS 500

typedef struct load load;

typedef struct lk_req {
    lookup *lk;
    flight_waiter w;
    quote_req r;
    int64_t promos[CATALOG_MAX_PROMOS_PER_QUOTE];
    size_t npromos;
    char key[KEY_MAX];
    uint64_t stamp; /* local generation when the request arrived */
    bool no_cache;
    bool too_many_promos; /* more active promotions than a key can name */
    int64_t arrived_us;   /* no-cache: must be answered from a load sent later */
    int64_t arrived_ms;   /* the same on the wall clock, for other instances' loads */
    bool leader;          /* started the flight: answered MISS rather than COALESCED */
    lookup_cb *cb;
    void *arg;
    struct event *deadline;
} lk_req;

struct load {
    load *next, *prev; /* every live load, for shutdown */
    lookup *lk;
    flight *f;
    quote_req r;
    int64_t promos[CATALOG_MAX_PROMOS_PER_QUOTE];
    size_t npromos;
    char key[KEY_MAX];
    char lock_key[KEY_MAX];
    char gen_product_key[KEY_MAX];
    char token[33];
    bool locked;               /* we hold the Redis lock */
    bool remote;               /* another instance holds it; waiting for its value */
    bool busy;                 /* a Redis or origin call for this load is in flight */
    bool recheck;              /* an announcement or the deadline came while busy */
    bool bypass;               /* Redis is not part of this load */
    bool obsolete;             /* the promotion set moved: serve, never store, the result */
    bool stored;               /* the result is in Redis (and announced) */
    bool take_over;            /* the pending remote check may take the lock over */
    int64_t origin_us;         /* when the latest origin query was sent (0: none) */
    int64_t remote_started_ms; /* wall clock start of the other instance's load */
    uint64_t gen_global, gen_product;
    uint64_t local_gen;
    int attempts;
    struct event *timer; /* deadline of the remote wait */
    char *stale;         /* an expired copy to serve if the origin fails */
    size_t stale_len;
    /* the result being stored */
    origin_result res;
};

struct lookup {
    struct event_base *base;
    const qc_config *cfg;
    pgpool *pool;
    tax_client *tax;
    catalog *cat;
    rcache *rc;
    flight_table *flights;
    hot *hot;
    envelope hot_env; /* the envelope of the last in-process hit */
    load *loads;
    char gen_global_key[KEY_MAX];
    char channel[KEY_MAX];
    uint64_t local_gen_all;
    uint64_t local_gen[LOCAL_GENS];
    size_t pending;
    bool closing;
    bool warned_waiters;
};

static void load_begin(load *ld);
static void load_origin(load *ld);

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static uint64_t local_gen_of(const lookup *lk, int64_t product_id)
{
    return lk->local_gen_all + lk->local_gen[(uint64_t)product_id % LOCAL_GENS];
}

static bool redis_usable(const lookup *lk)
{
    return lk->rc != NULL && rcache_is_up(lk->rc);
}

/* ---- answering requests ---- */

static void req_answer(lk_req *q, const lookup_answer *a)
{
    lookup *lk = q->lk;
    if (q->deadline)
        event_free(q->deadline);
    lk->pending--;
    q->cb(q->arg, a);
    free(q);
}

static void req_answer_error(lk_req *q, int status, const char *code, const char *msg,
                             int retry_after)
{
    size_t len;
    char *body = quote_render_error(code, msg, &len);
    lookup_answer a = {status, body, len, NULL, X_NONE, retry_after};
    req_answer(q, &a);
    free(body);
}

static void req_answer_envelope(lk_req *q, const envelope *e, const char *body, size_t len,
                                enum metrics_xcache x)
{
    lookup_answer a = {e->status, body, len, e->status == 200 ? e->etag : NULL, x, 0};
    req_answer(q, &a);
}

/* ---- loads ---- */

static load *load_new(lookup *lk, lk_req *q, const rcache_value *v)
{
    load *ld = xcalloc(1, sizeof(*ld));
    ld->lk = lk;
    ld->r = q->r;
    memcpy(ld->promos, q->promos, sizeof(q->promos));
    ld->npromos = q->npromos;
    memcpy(ld->key, q->key, KEY_MAX);
    key_lock(ld->lock_key, ld->key);
    key_product_gen(ld->gen_product_key, lk->cfg->key_version, q->r.product_id);
    ld->bypass = v == NULL;
    if (v != NULL) {
        ld->gen_global = v->gen_global;
        ld->gen_product = v->gen_product;
    }
    ld->local_gen = local_gen_of(lk, q->r.product_id);
    ld->f = flight_start(lk->flights, ld->key);
    flight_set_owner(ld->f, ld);
    ld->next = lk->loads;
    if (lk->loads)
        lk->loads->prev = ld;
    lk->loads = ld;
    metrics_gauge_set(G_FLIGHTS, (int64_t)flight_table_flights(lk->flights));
    return ld;
}

static void load_unlink(load *ld)
{
    lookup *lk = ld->lk;
    if (ld->prev)
        ld->prev->next = ld->next;
    else
        lk->loads = ld->next;
    if (ld->next)
        ld->next->prev = ld->prev;
}

static void req_wait(lk_req *q, const rcache_value *v, const char *stale, size_t stale_len);

/* Read your own write: a no-cache request that arrived after this load sent
 * its query may be asking because of a write the query did not see. */
static bool req_needs_later_load(const lk_req *q, const load *ld, const lookup_answer *a)
{
    if (!q->no_cache || ld->lk->closing)
        return false;
    if (a->xcache == X_MISS || a->xcache == X_BYPASS)
        return ld->origin_us != 0 && q->arrived_us > ld->origin_us;
    /* A value another instance loaded: its envelope says when that began. */
    return a->xcache == X_COALESCED && ld->remote_started_ms != 0 &&
           q->arrived_ms > ld->remote_started_ms;
}

static void req_rewait(lk_req *q, const load *ld)
{
    rcache_value v = {NULL, 0, ld->gen_global, ld->gen_product};
    event_free(q->deadline);
    q->deadline = NULL;
    q->leader = false;
    req_wait(q, ld->bypass ? NULL : &v, NULL, 0);
}

/* Takes the waiters out of the table first, then answers each: an answer
 * may start a new flight for the same key, which must not find this one. */
static void load_finish(load *ld, const lookup_answer *a)
{
    lookup *lk = ld->lk;
    size_t n;
    flight_waiter *w = flight_take(lk->flights, ld->f, &n);
    flight_free(ld->f);
    load_unlink(ld);
    if (ld->locked && redis_usable(lk)) {
        rcache_unlock(lk->rc, ld->lock_key, ld->token, NULL, NULL);
        /* Instances waiting on our lock re-check now, not at its deadline:
         * with no value stored, one of them takes over. */
        if (!ld->stored)
            rcache_publish(lk->rc, lk->channel, ld->key, NULL, NULL);
    }
    if (ld->timer)
        event_free(ld->timer);
    metrics_gauge_set(G_FLIGHTS, (int64_t)flight_table_flights(lk->flights));
    metrics_gauge_add(G_WAITERS, -(int64_t)n);
    while (w != NULL) {
        flight_waiter *next = w->next;
        lk_req *q = (lk_req *)((char *)w - offsetof(lk_req, w));
        w = next;
        if (req_needs_later_load(q, ld, a)) {
            req_rewait(q, ld);
            continue;
        }
        lookup_answer mine = *a;
        /* Everyone but the request that started the load waited on it. */
        if (!q->leader && (a->xcache == X_MISS || a->xcache == X_BYPASS))
            mine.xcache = X_COALESCED;
        if (mine.xcache == X_COALESCED)
            metrics_inc(M_COALESCED);
        req_answer(q, &mine);
    }
    free(ld->res.body);
    free(ld->stale);
    free(ld);
}

static void load_finish_error(load *ld, int status, const char *code, const char *msg)
{
    size_t len;
    char *body = quote_render_error(code, msg, &len);
    lookup_answer a = {status, body, len, NULL, X_NONE, 0};
    load_finish(ld, &a);
    free(body);
}

/* The origin failed: serve the stale copy if there is one. */
static void load_finish_failed(load *ld, const origin_result *res)
{
    envelope e;
    const char *body;
    size_t len;
    if (ld->stale && envelope_decode(ld->stale, ld->stale_len, &e, &body, &len) == 0) {
        lookup_answer a = {e.status, body, len, e.status == 200 ? e.etag : NULL, X_STALE, 0};
        load_finish(ld, &a);
        return;
    }
    lookup_answer a = {res->status, res->body, res->len, NULL, X_NONE, 0};
    load_finish(ld, &a);
}

/* The load's result as the envelope stored in Redis (caller frees). */
static char *load_envelope(const load *ld, size_t *len)
{
    envelope e = {0};
    e.status = ld->res.status;
    e.stored_at_ms = wall_ms();
    e.load_ms = ld->res.load_ms;
    e.product_id = ld->r.product_id;
    e.gen_global = ld->gen_global;
    e.gen_product = ld->gen_product;
    envelope_etag(ld->res.body, ld->res.len, e.etag);
    return envelope_encode(&e, ld->res.body, ld->res.len, len);
}

static int64_t fresh_until_ms(const lookup *lk, const envelope *e)
{
    int64_t s = e->status == 200 ? lk->cfg->ttl_s : lk->cfg->neg_ttl_s;
    return e->stored_at_ms + s * 1000;
}

/* Without Redis (--redis none) the in-process tier is the cache: keep the
 * result unless a write may have landed during the load. */
static void load_keep_in_process(load *ld)
{
    lookup *lk = ld->lk;
    bool cacheable = ld->res.status == 200 || ld->res.status == 404;
    if (lk->rc != NULL || !cacheable || ld->obsolete ||
        local_gen_of(lk, ld->r.product_id) != ld->local_gen)
        return;
    size_t len;
    char *value = load_envelope(ld, &len);
    envelope e;
    const char *body;
    size_t blen;
    if (envelope_decode(value, len, &e, &body, &blen) == 0)
        hot_put(lk->hot, ld->key, value, len, ld->local_gen, fresh_until_ms(lk, &e));
    free(value);
}

static void load_finish_result(load *ld)
{
    load_keep_in_process(ld);
    char etag[ENVELOPE_ETAG_LEN + 1];
    envelope_etag(ld->res.body, ld->res.len, etag);
    lookup_answer a = {ld->res.status,
                       ld->res.body,
                       ld->res.len,
                       ld->res.status == 200 ? etag : NULL,
                       ld->bypass ? X_BYPASS : X_MISS,
                       0};
    load_finish(ld, &a);
}

static bool shutting_down(load *ld)
{
    if (!ld->lk->closing)
        return false;
    load_finish_error(ld, 503, "shutting_down", "the proxy is shutting down");
    return true;
}

/* A write may have landed since the load began: read the generations again
 * and load again, or give up fencing after MAX_ATTEMPTS (the result is then
 * served, never stored). */
static void on_regen(void *arg, int status, const rcache_value *v);

/* After a promotion change the request's key no longer names the current
 * promotion set: load with the set that applies now, for the waiters only.
 * Storing it under the old key would let an instance whose catalog has not
 * reloaded yet serve it as current. */
static void load_refresh_promos(load *ld)
{
    int64_t now[CATALOG_MAX_PROMOS_PER_QUOTE];
    int n = catalog_active_promos(ld->lk->cat, ld->r.product_id, ld->r.region, wall_ms(), now,
                                  CATALOG_MAX_PROMOS_PER_QUOTE);
    if (n < 0) {
        ld->obsolete = true; /* cannot name the set: serve, never store */
        return;
    }
    size_t count = (size_t)n;
    if (count == ld->npromos && memcmp(now, ld->promos, count * sizeof(int64_t)) == 0)
        return;
    memcpy(ld->promos, now, count * sizeof(int64_t));
    ld->npromos = count;
    ld->obsolete = true;
}

static void load_retry(load *ld)
{
    lookup *lk = ld->lk;
    free(ld->res.body);
    ld->res.body = NULL;
    load_refresh_promos(ld);
    if (++ld->attempts >= MAX_ATTEMPTS) {
        log_warn("lookup %s: still changing after %d loads; serving uncached", ld->key,
                 ld->attempts);
        load_origin(ld);
        return;
    }
    ld->local_gen = local_gen_of(lk, ld->r.product_id);
    if (!ld->bypass && redis_usable(lk) &&
        rcache_read(lk->rc, ld->key, lk->gen_global_key, ld->gen_product_key, on_regen, ld) == 0) {
        ld->busy = true;
        return;
    }
    ld->bypass = true;
    load_origin(ld);
}

static void on_regen(void *arg, int status, const rcache_value *v)
{
    load *ld = arg;
    ld->busy = false;
    if (shutting_down(ld))
        return;
    if (status == RCACHE_OK) {
        ld->gen_global = v->gen_global;
        ld->gen_product = v->gen_product;
    } else {
        ld->bypass = true;
    }
    load_origin(ld);
}

static void on_store(void *arg, int status, long long stored)
{
    load *ld = arg;
    ld->busy = false;
    if (shutting_down(ld))
        return;
    if (status == RCACHE_OK && stored == 0) {
        metrics_inc(M_STORE_FENCED);
        load_retry(ld);
        return;
    }
    ld->stored = status == RCACHE_OK;
    load_finish_result(ld);
}

static void load_store(load *ld)
{
    lookup *lk = ld->lk;
    const qc_config *cfg = lk->cfg;
    size_t vlen;
    char *value = load_envelope(ld, &vlen);
    int64_t ttl_ms = ld->res.status == 200 ? (int64_t)(cfg->ttl_s + cfg->stale_ttl_s) * 1000
                                           : (int64_t)cfg->neg_ttl_s * 1000;
    int rc = -1;
    if (ttl_ms > 0)
        rc = rcache_store(lk->rc, ld->key, lk->gen_global_key, ld->gen_product_key, ld->gen_global,
                          ld->gen_product, value, vlen, ttl_ms, lk->channel, on_store, ld);
    free(value);
    if (rc == 0) {
        ld->busy = true;
        return;
    }
    load_finish_result(ld);
}

static void on_origin(void *arg, origin_result *res)
{
    load *ld = arg;
    ld->busy = false;
    ld->res = *res; /* takes the body */
    if (shutting_down(ld))
        return;
    bool cacheable = res->status == 200 || res->status == 404;
    if (!cacheable) {
        load_finish_failed(ld, res);
        return;
    }
    if (local_gen_of(ld->lk, ld->r.product_id) != ld->local_gen && ld->attempts < MAX_ATTEMPTS) {
        load_retry(ld);
        return;
    }
    if (ld->bypass || ld->obsolete || ld->attempts >= MAX_ATTEMPTS || !redis_usable(ld->lk)) {
        load_finish_result(ld);
        return;
    }
    load_store(ld);
}

static void load_origin(load *ld)
{
    lookup *lk = ld->lk;
    qc_error err;
    load_refresh_promos(ld);
    ld->origin_us = mono_us();
    if (origin_load(lk->pool, lk->tax, &ld->r, ld->promos, ld->npromos, on_origin, ld, &err) < 0) {
        origin_result res = {err.status, NULL, 0, 0};
        res.body = quote_render_error(err.code, err.message, &res.len);
        ld->res = res;
        load_finish_failed(ld, &res);
        return;
    }
    ld->busy = true;
}

/* ---- waiting for another instance ---- */

static void on_remote_read(void *arg, int status, const rcache_value *v);

/* Reads the entry while another instance holds the lock. take_over: the
 * check comes from an announcement or the lock's deadline, so an empty
 * answer means the holder is gone or stored nothing: try the lock again. */
static void remote_check(load *ld, bool take_over)
{
    lookup *lk = ld->lk;
    if (ld->busy) {
        ld->recheck = true;
        ld->take_over = ld->take_over || take_over;
        return;
    }
    ld->take_over = take_over;
    if (!redis_usable(lk) || rcache_read(lk->rc, ld->key, lk->gen_global_key, ld->gen_product_key,
                                         on_remote_read, ld) < 0) {
        /* Redis went away while we waited: load in process. */
        ld->remote = false;
        ld->bypass = true;
        load_origin(ld);
        return;
    }
    ld->busy = true;
}

static void remote_arm(load *ld)
{
    int ms = ld->lk->cfg->lock_ttl_ms + 50;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(ld->timer, &tv);
}

static bool entry_current(const lookup *lk, const rcache_value *v, envelope *e, const char **body,
                          size_t *len);

static void on_remote_read(void *arg, int status, const rcache_value *v)
{
    load *ld = arg;
    lookup *lk = ld->lk;
    ld->busy = false;
    if (shutting_down(ld))
        return;
    envelope e;
    const char *body;
    size_t len;
    if (status == RCACHE_OK && entry_current(lk, v, &e, &body, &len)) {
        lookup_answer a = {e.status, body, len, e.status == 200 ? e.etag : NULL, X_COALESCED, 0};
        ld->remote_started_ms = e.stored_at_ms - e.load_ms;
        load_finish(ld, &a);
        return;
    }
    if (ld->recheck) {
        ld->recheck = false;
        remote_check(ld, ld->take_over);
        return;
    }
    if (!ld->take_over && status == RCACHE_OK)
        return; /* the holder is still loading: keep waiting */
    /* No value after an announcement or the lock's deadline: the holder
     * died or stored nothing. Try to take over; SET NX lets one win. */
    if (status == RCACHE_OK) {
        ld->gen_global = v->gen_global;
        ld->gen_product = v->gen_product;
    }
    ld->remote = false;
    load_begin(ld);
}

static void on_remote_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    remote_check(arg, true);
}

static void on_message(void *arg, const char *msg, size_t len)
{
    lookup *lk = arg;
    char key[KEY_MAX];
    if (len >= KEY_MAX)
        return;
    memcpy(key, msg, len);
    key[len] = '\0';
    flight *f = flight_find(lk->flights, key);
    if (f == NULL)
        return;
    load *ld = flight_owner(f);
    if (ld->remote)
        remote_check(ld, true);
}

/* ---- the lock ---- */

static void on_lock(void *arg, int status, long long acquired)
{
    load *ld = arg;
    ld->busy = false;
    if (shutting_down(ld))
        return;
    if (status != RCACHE_OK) {
        ld->bypass = true; /* Redis failed us: load in process */
        load_origin(ld);
        return;
    }
    if (acquired) {
        metrics_inc(ld->attempts > 0 || ld->timer ? M_LOCK_EXPIRED : M_LOCK_ACQUIRED);
        ld->locked = true;
        if (ld->timer)
            evtimer_del(ld->timer); /* we hold the lock now: no remote wait */
        load_origin(ld);
        return;
    }
    metrics_inc(M_LOCK_WAITED);
    ld->remote = true;
    if (ld->timer == NULL)
        ld->timer = evtimer_new(ld->lk->base, on_remote_deadline, ld);
    remote_arm(ld);
    /* The value may have landed between our read and our lock attempt. */
    remote_check(ld, false);
}

static void load_begin(load *ld)
{
    lookup *lk = ld->lk;
    if (!ld->bypass && redis_usable(lk)) {
        unsigned char raw[16];
        if (RAND_bytes(raw, sizeof(raw)) != 1) {
            log_error("lookup: RAND_bytes failed");
            abort();
        }
        for (size_t i = 0; i < sizeof(raw); i++)
            snprintf(ld->token + 2 * i, 3, "%02x", raw[i]);
        if (rcache_lock(lk->rc, ld->lock_key, ld->token, lk->cfg->lock_ttl_ms, on_lock, ld) == 0) {
            ld->busy = true;
            return;
        }
    }
    ld->bypass = true;
    load_origin(ld);
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
 * v: what Redis said (NULL when Redis is not in use). stale: an expired
 * copy (envelope bytes) the load may serve if the origin fails. */
static void req_wait(lk_req *q, const rcache_value *v, const char *stale, size_t stale_len)
{
    lookup *lk = q->lk;
    flight *f = flight_find(lk->flights, q->key);
    load *started = NULL;
    if (f == NULL) {
        started = load_new(lk, q, v);
        f = started->f;
        q->leader = true;
        if (stale) {
            started->stale = xmalloc(stale_len);
            memcpy(started->stale, stale, stale_len);
            started->stale_len = stale_len;
        }
    }
    if (flight_join(lk->flights, f, &q->w) < 0) {
        metrics_inc(M_WAITERS_REJECTED);
        if (!lk->warned_waiters)
            log_warn("lookup %s: waiter bound reached; refusing with 503 (logged once)", q->key);
        lk->warned_waiters = true;
        req_answer_error(q, 503, "too_many_waiters", "too many requests are waiting for this quote",
                         1);
    } else {
        metrics_gauge_add(G_WAITERS, 1);
        const qc_config *cfg = lk->cfg;
        int ms = cfg->lock_ttl_ms + cfg->pg_timeout_ms + cfg->tax_timeout_ms + 1000;
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        q->deadline = evtimer_new(lk->base, on_waiter_deadline, q);
        evtimer_add(q->deadline, &tv);
    }
    if (started)
        load_begin(started);
}

/* Decodes v's entry and says whether it may be served as fresh. */
static bool entry_current(const lookup *lk, const rcache_value *v, envelope *e, const char **body,
                          size_t *len)
{
    if (v->entry == NULL || envelope_decode(v->entry, v->entry_len, e, body, len) < 0)
        return false;
    if (e->gen_global != v->gen_global || e->gen_product != v->gen_product)
        return false; /* invalidated since it was stored */
    int64_t age = wall_ms() - e->stored_at_ms;
    int64_t fresh_ms = (int64_t)(e->status == 200 ? lk->cfg->ttl_s : lk->cfg->neg_ttl_s) * 1000;
    return age < fresh_ms;
}

/* An expired 200 that is still inside --stale-ttl and not invalidated. */
static bool entry_stale_ok(const lookup *lk, const rcache_value *v)
{
    envelope e;
    const char *body;
    size_t len;
    if (v->entry == NULL || envelope_decode(v->entry, v->entry_len, &e, &body, &len) < 0)
        return false;
    int64_t age = wall_ms() - e.stored_at_ms;
    return e.status == 200 && e.gen_global == v->gen_global && e.gen_product == v->gen_product &&
           age < (int64_t)(lk->cfg->ttl_s + lk->cfg->stale_ttl_s) * 1000;
}

/* Serves a stale copy now and makes sure a refresh is running. */
static void req_serve_stale(lk_req *q, const rcache_value *v)
{
    lookup *lk = q->lk;
    envelope e;
    const char *body;
    size_t len;
    envelope_decode(v->entry, v->entry_len, &e, &body, &len);
    if (flight_find(lk->flights, q->key) == NULL) {
        load *ld = load_new(lk, q, v);
        ld->stale = xmalloc(v->entry_len);
        memcpy(ld->stale, v->entry, v->entry_len);
        ld->stale_len = v->entry_len;
        load_begin(ld);
    }
    req_answer_envelope(q, &e, body, len, X_STALE);
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
        req_wait(q, NULL, NULL, 0);
        return;
    }
    envelope e;
    const char *body;
    size_t len;
    if (!q->no_cache && entry_current(lk, v, &e, &body, &len)) {
        int64_t until = wall_ms() + HOT_REDIS_MS;
        int64_t fresh = fresh_until_ms(lk, &e);
        hot_put(lk->hot, q->key, v->entry, v->entry_len, q->stamp, fresh < until ? fresh : until);
        req_answer_envelope(q, &e, body, len, X_HIT);
        return;
    }
    if (!q->no_cache && entry_stale_ok(lk, v)) {
        req_serve_stale(q, v);
        return;
    }
    bool keep_stale = v->entry != NULL && entry_stale_ok(lk, v);
    req_wait(q, v, keep_stale ? v->entry : NULL, v->entry_len);
}

/* Without Redis the request still coalesces in process; the answer must
 * come later, so the flight is joined from a zero-delay event. */
static void on_deferred(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lk_req *q = arg;
    event_free(q->deadline);
    q->deadline = NULL;
    if (q->lk->closing) {
        req_answer_error(q, 503, "shutting_down", "the proxy is shutting down", 0);
        return;
    }
    if (q->too_many_promos) {
        req_answer_error(q, 500, "too_many_promotions",
                         "more promotions apply to this quote than the proxy can key", 0);
        return;
    }
    req_wait(q, NULL, NULL, 0);
}

void lookup_quote(lookup *lk, const quote_req *r, bool no_cache, lookup_cb *cb, void *arg)
{
    lk_req *q = xcalloc(1, sizeof(*q));
    q->lk = lk;
    q->r = *r;
    q->no_cache = no_cache;
    q->arrived_us = no_cache ? mono_us() : 0;
    q->arrived_ms = no_cache ? wall_ms() : 0;
    q->cb = cb;
    q->arg = arg;
    lk->pending++;
    int n = catalog_active_promos(lk->cat, r->product_id, r->region, wall_ms(), q->promos,
                                  CATALOG_MAX_PROMOS_PER_QUOTE);
    q->npromos = n > 0 ? (size_t)n : 0;
    q->too_many_promos = n < 0;
    key_entry(q->key, lk->cfg->key_version, r, q->promos, q->npromos);
    q->stamp = local_gen_of(lk, r->product_id);
    char gp[KEY_MAX];
    key_product_gen(gp, lk->cfg->key_version, r->product_id);
    if (!q->too_many_promos && redis_usable(lk) &&
        rcache_read(lk->rc, q->key, lk->gen_global_key, gp, on_read, q) == 0)
        return;
    q->deadline = event_new(lk->base, -1, 0, on_deferred, q);
    event_active(q->deadline, EV_TIMEOUT, 1);
}

void lookup_redis_down(lookup *lk)
{
    /* Loads waiting on another instance's lock would wait for an
     * announcement that cannot come: load in process now instead. */
    load *next;
    for (load *ld = lk->loads; ld != NULL; ld = next) {
        next = ld->next; /* remote_check may finish (free) ld */
        if (ld->remote && !ld->busy)
            remote_check(ld, true);
    }
}

bool lookup_quote_hot(lookup *lk, const quote_req *r, lookup_answer *a)
{
    /* With Redis configured but away, answers are BYPASS loads: the copies
     * here were vouched for by Redis, which can no longer say otherwise. */
    if (lk->rc != NULL && !rcache_is_up(lk->rc))
        return false;
    int64_t promos[CATALOG_MAX_PROMOS_PER_QUOTE];
    int64_t now = wall_ms();
    int n = catalog_active_promos(lk->cat, r->product_id, r->region, now, promos,
                                  CATALOG_MAX_PROMOS_PER_QUOTE);
    if (n < 0)
        return false;
    char key[KEY_MAX];
    key_entry(key, lk->cfg->key_version, r, promos, (size_t)n);
    size_t vlen, len;
    const char *body;
    const char *v = hot_get(lk->hot, key, local_gen_of(lk, r->product_id), now, &vlen);
    envelope *e = &lk->hot_env;
    if (v == NULL || envelope_decode(v, vlen, e, &body, &len) < 0)
        return false;
    lookup_answer hit = {e->status, body, len, e->status == 200 ? e->etag : NULL, X_HIT, 0};
    *a = hit;
    return true;
}

/* ---- invalidation, life cycle ---- */

void lookup_invalidate_product(lookup *lk, int64_t product_id)
{
    lk->local_gen[(uint64_t)product_id % LOCAL_GENS]++;
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
    lk->pool = pool;
    lk->tax = tax;
    lk->cat = cat;
    lk->rc = rc;
    lk->flights = flight_table_new((size_t)cfg->max_waiters_per_key, (size_t)cfg->max_waiters);
    lk->hot = hot_new(HOT_SLOTS, HOT_MAX_VALUE);
    key_global_gen(lk->gen_global_key, cfg->key_version);
    key_channel(lk->channel, cfg->key_version);
    if (rc != NULL)
        rcache_subscribe(rc, lk->channel, on_message, lk);
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
        load_finish_error(lk->loads, 503, "shutting_down", "the proxy is shutting down");
    flight_table_free(lk->flights);
    hot_free(lk->hot);
    free(lk);
}
