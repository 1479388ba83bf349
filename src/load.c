/* load: owns the per-key loads of the lookup module (private to it; see
 * lookup_int.h): the owner of a flight, never of the request that started
 * it.
 *
 * A load is a state machine with one transition function, load_set_state,
 * which checks the move, logs it (debug, with the key) and arms the one
 * deadline of the state entered:
 *
 *   NEW -> LOCKING ------------> LOADING -> STORING -> DONE
 *            |                   ^  ^  \          /
 *            v      (took over)  |  |   REFENCING <   (fenced by a write)
 *   CHECKING_REMOTE -------------+  |
 *            ^ |                    | (Redis gone)
 *            | v                    |
 *   WAITING_REMOTE -----------------+      and any state -> DONE
 *
 * LOCKING: SET NX PX on the key's lock, with the entry read right after it
 * in the same round trip (check after the lock: a value stored before we
 * won is answered, not loaded again). Won: load from the origin, store
 * through the fenced script (which also announces the key), release the
 * lock, wake the waiters; while loading the lock is extended every
 * lock_ttl/3. Lost: re-read at once (CHECKING_REMOTE: entry and lock in one
 * script that also takes a free lock), then wait (WAITING_REMOTE) for the
 * announcement on the shared subscriber connection, for the subscriber to
 * come back, or for the lock's expiry. Without Redis the same load runs in
 * process only (ld->local).
 *
 * Fencing: a load remembers the generations it started under (Redis
 * counters, and a local counter bumped by invalidations seen by this
 * instance). If either moved when the result arrives, what it read may
 * predate a write: it reloads instead of storing or serving it. */
#include "lookup_int.h"

#include <inttypes.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/hex.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"
#include "quotecache/origin.h"
#include "quotecache/quote.h"

#define MAX_ATTEMPTS 3 /* loads of one flight fenced by concurrent writes */
/* How soon a no-cache wait checks again when the value there is older than
 * the request (see on_check). */
#define NO_CACHE_RECHECK_MS 50
#define REMOTE_SLACK_MS 50     /* past the lock's expiry before re-checking */
#define REMOTE_RECHECK_MS 1000 /* the longest wait on another instance's lock */

enum load_state {
    LS_NEW,             /* created, nothing sent yet */
    LS_LOCKING,         /* the lock attempt is in flight */
    LS_LOADING,         /* the origin load is in flight */
    LS_STORING,         /* the fenced store is in flight */
    LS_REFENCING,       /* re-reading the generations before a retry */
    LS_WAITING_REMOTE,  /* another instance holds the lock; nothing in flight */
    LS_CHECKING_REMOTE, /* re-reading the entry while another instance holds the lock */
    LS_DONE,            /* answered; freed before load_finish returns */
    LS_COUNT
};

static const char *const state_name[LS_COUNT] = {
    [LS_NEW] = "NEW",
    [LS_LOCKING] = "LOCKING",
    [LS_LOADING] = "LOADING",
    [LS_STORING] = "STORING",
    [LS_REFENCING] = "REFENCING",
    [LS_WAITING_REMOTE] = "WAITING_REMOTE",
    [LS_CHECKING_REMOTE] = "CHECKING_REMOTE",
    [LS_DONE] = "DONE",
};

#define B(s) (1u << (s))
/* The states each state may move to. Anything else is a bug: abort. */
static const unsigned legal_next[LS_COUNT] = {
    [LS_NEW] = B(LS_LOCKING) | B(LS_LOADING) | B(LS_DONE),
    [LS_LOCKING] = B(LS_LOADING) | B(LS_WAITING_REMOTE) | B(LS_CHECKING_REMOTE) | B(LS_DONE),
    [LS_LOADING] = B(LS_LOADING) | B(LS_STORING) | B(LS_REFENCING) | B(LS_DONE),
    [LS_STORING] = B(LS_LOADING) | B(LS_REFENCING) | B(LS_DONE),
    [LS_REFENCING] = B(LS_LOADING) | B(LS_DONE),
    [LS_WAITING_REMOTE] = B(LS_CHECKING_REMOTE) | B(LS_LOADING) | B(LS_DONE),
    [LS_CHECKING_REMOTE] =
        B(LS_CHECKING_REMOTE) | B(LS_WAITING_REMOTE) | B(LS_LOADING) | B(LS_DONE),
    [LS_DONE] = 0,
};

struct load {
    load *next, *prev; /* every live load, for shutdown */
    lookup *lk;
    flight *f;
    enum load_state state; /* changed only by load_set_state */
    quote_req r;
    int64_t promos[CATALOG_MAX_PROMOS_PER_QUOTE];
    size_t npromos;
    /* The set key names (promos may move on, see load_refresh_promos): the
     * in-process tier keeps copies under the request key names. */
    int64_t key_promos[CATALOG_MAX_PROMOS_PER_QUOTE];
    size_t key_npromos;
    uint64_t key_promo_hash;
    /* When the origin answered: the envelope's stored_at, one for the copy
     * stored in Redis and the one kept in process, so a Redis hit finds the
     * bytes it holds (and the in-process tier only extends their expiry). */
    int64_t stored_at_ms;
    char key[KEY_MAX];
    char lock_key[KEY_MAX];
    scope_keys gens; /* the scope counters (scope.h) */
    char token[33];
    char etag[ENVELOPE_ETAG_LEN + 1]; /* res.body's, once computed ('\0': not yet) */
    /* Orthogonal to the state: */
    bool local;    /* Redis is not part of this load: nothing stored */
    bool locked;   /* we hold the Redis lock: extended while loading, released at DONE */
    bool obsolete; /* the promotion set moved: serve, never store, the result */
    /* Sub-flag and parameter of the states that wait on another instance: */
    bool recheck;              /* CHECKING_REMOTE: news came while the read was in flight */
    int wait_ms;               /* WAITING_REMOTE: its deadline, set before entering */
    struct event *timer;       /* the single deadline of the current state */
    int64_t lock_sent_us;      /* when the latest lock attempt was sent */
    int64_t lock_renewed_us;   /* when the lock we hold was last set or extended (sent) */
    int64_t locked_us;         /* when the lock we hold was won (its attempt sent) */
    uint64_t read_local;       /* local generation when the latest lock or check read was sent */
    int64_t no_cache_since_ms; /* latest arrival of a no-cache waiter (wall clock; 0: none) */
    int64_t origin_us;         /* when the latest origin query was sent (0: none) */
    int64_t remote_began_ms;   /* wall clock start of the other instance's load */
    uint64_t gen_global, gen_product;
    uint64_t local_gen;
    int attempts;
    char *stale; /* an expired copy to serve if the origin fails */
    size_t stale_len;
    uint64_t stale_local; /* the local generation when that copy was read */
    origin_result res;    /* the result being stored */
};

static void load_origin(load *ld);
static void remote_check(load *ld);
static void load_extend_lock(load *ld);

/* ---- the load state machine ---- */

/* How often a held lock is extended: well inside its life, so a slow load
 * or a fenced reload never outlives it (no second instance loads). */
static int64_t lock_lease_ms(const lookup *lk)
{
    int64_t ms = lk->cfg->lock_ttl_ms / 3;
    return ms > 0 ? ms : 1;
}

/* The deadline of the state ld is in, or -1 for none (the calls in flight
 * carry their own: rcache, pgpool and tax time their ops out). Waiting on
 * another instance: the re-check when its lock expires. Working under our
 * lock: the next extension, counted from the last one, not from entering
 * the state, so quick transitions never postpone it. */
static int64_t load_deadline_ms(const load *ld)
{
    switch (ld->state) {
    case LS_WAITING_REMOTE:
        return ld->wait_ms;
    case LS_LOADING:
    case LS_STORING:
    case LS_REFENCING:
        if (!ld->locked)
            return -1;
        int64_t due_us = ld->lock_renewed_us + lock_lease_ms(ld->lk) * 1000 - mono_us();
        return due_us > 0 ? due_us / 1000 : 0;
    default:
        return -1;
    }
}

/* The answer of one extension. It may come after the load is gone, so it
 * owns a copy of the key rather than pointing at the load. */
typedef struct lease_op {
    char lock_key[KEY_MAX];
} lease_op;

static void on_extended(void *arg, int status, long long extended)
{
    lease_op *op = arg;
    if (status == RCACHE_OK && extended == 0)
        log_warn("lookup %s: the lock expired before it was extended; another instance may "
                 "load the same key (the fenced store still keeps the cache right)",
                 op->lock_key);
    free(op);
}

/* Token-guarded: a lock that expired and was taken over stays the other's;
 * then the fenced store still keeps a result read before a write out of
 * the cache. */
static void load_extend_lock(load *ld)
{
    lookup *lk = ld->lk;
    if (!ld->locked || !redis_usable(lk))
        return;
    ld->lock_renewed_us = mono_us();
    lease_op *op = xmalloc(sizeof(*op));
    memcpy(op->lock_key, ld->lock_key, KEY_MAX);
    if (rcache_extend(lk->rc, ld->lock_key, ld->token, lk->cfg->lock_ttl_ms, on_extended, op) < 0)
        free(op);
    log_debug("lookup %s: lock extended by %d ms", ld->key, lk->cfg->lock_ttl_ms);
    struct timeval tv = ms_tv(lock_lease_ms(lk));
    evtimer_add(ld->timer, &tv);
}

static void on_load_timer(evutil_socket_t fd, short what, void *arg);

/* The one place a load changes state: checks the transition is legal, logs
 * it, disarms the old state's deadline and arms the new one's. Sub-flags of
 * the old state lapse. */
static void load_set_state(load *ld, enum load_state to)
{
    enum load_state from = ld->state;
    if (!(legal_next[from] & B(to))) {
        log_error("lookup %s: illegal load transition %s -> %s", ld->key, state_name[from],
                  state_name[to]);
        abort();
    }
    log_debug("lookup %s: %s -> %s%s%s", ld->key, state_name[from], state_name[to],
              ld->locked ? " (locked)" : "", ld->local ? " (local)" : "");
    evtimer_del(ld->timer);
    ld->recheck = false;
    ld->state = to;
    int64_t ms = load_deadline_ms(ld);
    if (ms >= 0) {
        struct timeval tv = ms_tv(ms);
        evtimer_add(ld->timer, &tv);
    }
}

static void on_load_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    load *ld = arg;
    if (ld->state == LS_WAITING_REMOTE)
        remote_check(ld);
    else
        load_extend_lock(ld);
}

load *load_start(lookup *lk, const lk_req *q, const fresh_gens *g, const char *stale,
                 size_t stale_len, uint64_t stale_local)
{
    load *ld = xcalloc(1, sizeof(*ld));
    ld->lk = lk;
    ld->state = LS_NEW;
    ld->r = q->r;
    memcpy(ld->promos, q->promos, q->npromos * sizeof(int64_t));
    ld->npromos = q->npromos;
    memcpy(ld->key_promos, q->promos, q->npromos * sizeof(int64_t));
    ld->key_npromos = q->npromos;
    ld->key_promo_hash = q->promo_hash;
    memcpy(ld->key, q->key, KEY_MAX);
    key_lock(ld->lock_key, ld->key);
    scope_keys_of(&ld->gens, lk->cfg->key_version, &q->r);
    ld->local = g == NULL;
    if (g != NULL) {
        ld->gen_global = g->global;
        ld->gen_product = g->product;
    }
    ld->local_gen = local_gen_of(lk, &q->r);
    ld->timer = evtimer_new(lk->base, on_load_timer, ld);
    ld->f = flight_start(lk->flights, ld->key);
    flight_set_owner(ld->f, ld);
    ld->next = lk->loads;
    if (lk->loads)
        lk->loads->prev = ld;
    lk->loads = ld;
    if (stale) {
        ld->stale = xmalloc(stale_len);
        memcpy(ld->stale, stale, stale_len);
        ld->stale_len = stale_len;
        ld->stale_local = stale_local;
    }
    metrics_gauge_set(G_FLIGHTS, (int64_t)flight_table_flights(lk->flights));
    return ld;
}

void load_join(load *ld, const lk_req *q)
{
    if (q->no_cache && q->arrived_ms > ld->no_cache_since_ms)
        ld->no_cache_since_ms = q->arrived_ms;
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

enum {
    FIN_ANNOUNCED = 1, /* the result was stored and announced */
    FIN_STALE_OK = 2   /* the origin failed: waiters may get the stale copy */
};

/* A lock our load could not release (Redis unusable: a failover, a hang;
 * or the release lost with its connection) would outlive the load until
 * --lock-ttl, and every instance's requests for the key would wait that
 * long: kept for load_redis_up. */
static void abandon_lock(lookup *lk, const char *lock_key, const char *token, const char *key)
{
    struct abandoned_lock *a = &lk->abandoned[lk->abandoned_next];
    lk->abandoned_next = (lk->abandoned_next + 1) % ABANDONED_MAX;
    if (lk->nabandoned < ABANDONED_MAX)
        lk->nabandoned++;
    snprintf(a->lock_key, sizeof(a->lock_key), "%s", lock_key);
    snprintf(a->key, sizeof(a->key), "%s", key);
    snprintf(a->token, sizeof(a->token), "%s", token);
}

typedef struct unlock_op {
    lookup *lk; /* outlives the op: rcache_free answers it first */
    struct abandoned_lock a;
} unlock_op;

static void on_unlocked(void *arg, int status, long long deleted)
{
    (void)deleted;
    unlock_op *op = arg;
    if (status != RCACHE_OK)
        abandon_lock(op->lk, op->a.lock_key, op->a.token, op->a.key);
    free(op);
}

/* Token-guarded: a lock that expired and was taken since is left alone.
 * announce: wake the waiters (no value was stored). */
static void release_lock(lookup *lk, const char *lock_key, const char *token, const char *key,
                         bool announce)
{
    unlock_op *op = xmalloc(sizeof(*op));
    op->lk = lk;
    snprintf(op->a.lock_key, sizeof(op->a.lock_key), "%s", lock_key);
    snprintf(op->a.key, sizeof(op->a.key), "%s", key);
    snprintf(op->a.token, sizeof(op->a.token), "%s", token);
    if (rcache_unlock(lk->rc, lock_key, token, on_unlocked, op) < 0) {
        free(op);
        abandon_lock(lk, lock_key, token, key);
        return;
    }
    if (announce)
        rcache_publish(lk->rc, lk->channel, key, NULL, NULL);
}

/* Takes the waiters out of the table first, then answers each: an answer
 * may start a new flight for the same key, which must not find this one. */
static void load_finish(load *ld, const lookup_answer *a, int flags)
{
    lookup *lk = ld->lk;
    size_t n;
    load_set_state(ld, LS_DONE);
    flight_waiter *w = flight_take(lk->flights, ld->f, &n);
    flight_free(ld->f);
    load_unlink(ld);
    if (ld->locked && redis_usable(lk)) {
        metrics_observe_us(H_LOCK_HOLD, 0, mono_us() - ld->locked_us);
        /* Instances waiting on our lock re-check now, not at its deadline:
         * with no value stored, one of them takes over. */
        release_lock(lk, ld->lock_key, ld->token, ld->key, !(flags & FIN_ANNOUNCED));
    } else if (ld->locked && lk->rc != NULL) {
        abandon_lock(lk, ld->lock_key, ld->token, ld->key);
    }
    event_free(ld->timer);
    metrics_gauge_set(G_FLIGHTS, (int64_t)flight_table_flights(lk->flights));
    metrics_gauge_add(G_WAITERS, -(int64_t)n);
    load_outcome o = {(flags & FIN_STALE_OK) ? ld->stale : NULL,
                      ld->stale_len,
                      ld->stale_local,
                      {ld->gen_global, ld->gen_product},
                      ld->local,
                      ld->r.product_id,
                      ld->origin_us,
                      ld->remote_began_ms};
    lookup_wake(w, a, &o);
    free(ld->res.body);
    free(ld->stale);
    free(ld);
}

static void load_finish_error(load *ld, int status, const char *code, const char *msg)
{
    size_t len;
    char *body = quote_render_error(code, msg, &len);
    lookup_answer a = {status, body, len, NULL, X_NONE, 0, 0, NULL};
    load_finish(ld, &a, 0);
    free(body);
}

/* The origin failed: each waiter gets the stale copy if it may, else the
 * error. */
static void load_finish_failed(load *ld, const origin_result *res)
{
    lookup_answer a = {res->status, res->body, res->len, NULL, X_NONE, 0, 0, NULL};
    load_finish(ld, &a, FIN_STALE_OK);
}

/* The result's ETag (a SHA-256 of the body), computed once per body: the
 * envelope stored in Redis, the copy kept in process and the answer all
 * carry it, and each digest costs ~14k instructions. */
static const char *load_etag(load *ld)
{
    if (ld->etag[0] == '\0')
        envelope_etag(ld->res.body, ld->res.len, ld->etag);
    return ld->etag;
}

/* Takes res (and its body) as the load's result. */
static void load_set_result(load *ld, const origin_result *res)
{
    ld->res = *res;
    ld->etag[0] = '\0';
}

/* The load's result as the envelope stored in Redis (caller frees). */
static char *load_envelope(load *ld, size_t *len)
{
    envelope e = {0};
    e.status = ld->res.status;
    e.stored_at_ms = ld->stored_at_ms;
    e.load_ms = ld->res.load_ms;
    e.product_id = ld->r.product_id;
    e.gen_global = ld->gen_global;
    e.gen_product = ld->gen_product;
    memcpy(e.etag, load_etag(ld), sizeof(e.etag));
    return envelope_encode(&e, ld->res.body, ld->res.len, len);
}

static hot_req load_hot_req(const load *ld)
{
    hot_req k = {&ld->r, ld->key_promos, ld->key_npromos, ld->key_promo_hash};
    return k;
}

/* Keeps the result in process. Without Redis (--redis none) the
 * in-process tier is the cache; with Redis, a result just stored replaces
 * the copy here, so a no-cache load is read by the plain requests after it
 * (read your own write). Never when a write may have landed during the
 * load (hot_keep checks the local generation). */
static void load_keep_in_process(load *ld, bool stored)
{
    lookup *lk = ld->lk;
    bool cacheable = ld->res.status == 200 || ld->res.status == 404;
    if (lk->rc != NULL ? !stored : !cacheable || ld->obsolete)
        return;
    size_t len;
    char *value = load_envelope(ld, &len);
    hot_req k = load_hot_req(ld);
    envelope e;
    const char *body;
    size_t blen;
    if (envelope_decode(value, len, &e, &body, &blen) == 0)
        lookup_hot_keep(lk, &k, ld->key, value, len, &e, ld->local_gen);
    free(value);
}

static void load_finish_result(load *ld, bool stored)
{
    load_keep_in_process(ld, stored);
    lookup_answer a = {ld->res.status,
                       ld->res.body,
                       ld->res.len,
                       ld->res.status == 200 ? load_etag(ld) : NULL,
                       ld->local ? X_BYPASS : X_MISS,
                       0,
                       0,
                       NULL};
    load_finish(ld, &a, stored ? FIN_ANNOUNCED : 0);
}

static bool shutting_down(load *ld)
{
    if (!ld->lk->closing)
        return false;
    load_finish_error(ld, 503, "shutting_down", "the proxy is shutting down");
    return true;
}

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

static void on_regen(void *arg, int status, const rcache_value *v);

/* A write may have landed since the load began: read the generations again
 * and load again, or give up fencing after MAX_ATTEMPTS (the result is then
 * served, never stored). */
static void load_retry(load *ld)
{
    lookup *lk = ld->lk;
    free(ld->res.body);
    ld->res.body = NULL;
    ld->etag[0] = '\0';
    load_refresh_promos(ld);
    metrics_inc(M_LOAD_RETRIES); /* every path below loads again */
    if (++ld->attempts >= MAX_ATTEMPTS) {
        log_warn("lookup %s: still changing after %d loads; serving uncached", ld->key,
                 ld->attempts);
        load_origin(ld);
        return;
    }
    ld->local_gen = local_gen_of(lk, &ld->r);
    if (!ld->local && redis_usable(lk) &&
        rcache_read(lk->rc, ld->key, lk->gen_global_key, &ld->gens, on_regen, ld) == 0) {
        load_set_state(ld, LS_REFENCING);
        return;
    }
    ld->local = true;
    load_origin(ld);
}

static void on_regen(void *arg, int status, const rcache_value *v)
{
    load *ld = arg;
    if (shutting_down(ld))
        return;
    if (status == RCACHE_OK) {
        ld->gen_global = v->gen_global;
        ld->gen_product = v->gen_product;
    } else {
        ld->local = true;
    }
    load_origin(ld);
}

static void on_store(void *arg, int status, long long stored)
{
    load *ld = arg;
    if (shutting_down(ld))
        return;
    if (status == RCACHE_OK && stored == 0) {
        metrics_inc(M_STORE_FENCED);
        load_retry(ld);
        return;
    }
    load_finish_result(ld, status == RCACHE_OK);
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
        rc = rcache_store(lk->rc, ld->key, lk->gen_global_key, &ld->gens, ld->gen_global,
                          ld->gen_product, value, vlen, ttl_ms, lk->channel, on_store, ld);
    free(value);
    if (rc == 0) {
        load_set_state(ld, LS_STORING);
        return;
    }
    load_finish_result(ld, false);
}

static void on_origin(void *arg, origin_result *res)
{
    load *ld = arg;
    load_set_result(ld, res); /* takes the body */
    ld->stored_at_ms = wall_ms();
    if (shutting_down(ld))
        return;
    bool cacheable = res->status == 200 || res->status == 404;
    if (!cacheable) {
        load_finish_failed(ld, res);
        return;
    }
    if (local_gen_of(ld->lk, &ld->r) != ld->local_gen && ld->attempts < MAX_ATTEMPTS) {
        load_retry(ld);
        return;
    }
    if (ld->local || ld->obsolete || ld->attempts >= MAX_ATTEMPTS || !redis_usable(ld->lk)) {
        load_finish_result(ld, false);
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
        load_set_result(ld, &res);
        load_finish_failed(ld, &res);
        return;
    }
    load_set_state(ld, LS_LOADING);
}

/* ---- waiting for another instance ---- */

static void on_check(void *arg, int status, const rcache_lock_value *lv);

/* Answers the load from the entry Redis returned, when it is current and,
 * for the no-cache requests waiting, produced by a load that began after
 * they arrived. The copy goes to the in-process tier too. */
static bool load_answer_from_entry(load *ld, const rcache_value *v)
{
    lookup *lk = ld->lk;
    envelope e;
    const char *body;
    size_t len;
    if (v->entry == NULL || envelope_decode(v->entry, v->entry_len, &e, &body, &len) < 0 ||
        !fresh_is_current(&lk->policy, &e, gens_of(v), wall_ms()))
        return false;
    int64_t began = fresh_load_began_ms(&e);
    if (fresh_needs_later_load(ld->no_cache_since_ms, began))
        return false;
    hot_req k = load_hot_req(ld);
    lookup_hot_keep(lk, &k, ld->key, v->entry, v->entry_len, &e, ld->read_local);
    lookup_answer a = {e.status, body,           len, e.status == 200 ? e.etag : NULL, X_COALESCED,
                       0,        e.stored_at_ms, NULL};
    ld->remote_began_ms = began;
    load_finish(ld, &a, 0);
    return true;
}

/* A fresh token for each lock attempt: an extension or release never
 * touches a lock that expired and is someone else's now. */
/* A lock token no other load holds: this process's random seed (drawn by
 * its first load, so a forked worker never shares its parent's) and a
 * counter, in hex. RAND_bytes per load cost ~18k instructions and a getpid
 * (OpenSSL's fork check), 16 snprintf calls another 8k. */
static void load_new_token(load *ld)
{
    lookup *lk = ld->lk;
    if (!lk->token_seeded) {
        if (RAND_bytes((unsigned char *)&lk->token_seed, sizeof(lk->token_seed)) != 1) {
            log_error("lookup: RAND_bytes failed");
            abort();
        }
        lk->token_seeded = true;
    }
    hex_u64(lk->token_seed, ld->token);
    hex_u64(lk->token_next++, ld->token + 16);
    ld->token[32] = '\0';
}

/* Reads the entry and the lock while another instance holds (or held) it;
 * a free lock is taken in the same step (take-over). */
static void remote_read(load *ld)
{
    lookup *lk = ld->lk;
    load_new_token(ld);
    ld->read_local = local_gen_of(lk, &ld->r);
    ld->lock_sent_us = mono_us();
    if (!redis_usable(lk) ||
        rcache_check(lk->rc, ld->lock_key, ld->token, lk->cfg->lock_ttl_ms, ld->key,
                     lk->gen_global_key, &ld->gens, on_check, ld) < 0) {
        /* Redis went away while we waited: load in process. */
        ld->local = true;
        load_origin(ld);
        return;
    }
    load_set_state(ld, LS_CHECKING_REMOTE);
}

/* Something says the value may be there (an announcement, the lock's
 * deadline, the subscriber back): read now, or again once the read in
 * flight has answered (it may have been executed before the news). */
static void remote_check(load *ld)
{
    if (ld->state == LS_CHECKING_REMOTE)
        ld->recheck = true;
    else if (ld->state == LS_WAITING_REMOTE)
        remote_read(ld);
}

/* Woken by the announcement, or at the lock's expiry, and at least every
 * REMOTE_RECHECK_MS: an announcement can be missed (a subscriber moving
 * to another node in a failover, a release sent once Redis was back) and
 * a lock can outlive its load; a missed one then costs a second, not
 * --lock-ttl. */
static void load_wait_remote(load *ld, int64_t lock_pttl)
{
    int64_t ms = lock_pttl >= 0 ? lock_pttl : ld->lk->cfg->lock_ttl_ms;
    if (ms > REMOTE_RECHECK_MS)
        ms = REMOTE_RECHECK_MS;
    ld->wait_ms = (int)ms + REMOTE_SLACK_MS;
    load_set_state(ld, LS_WAITING_REMOTE);
}

/* What a lock attempt (rcache_lock_read) and a re-check (rcache_check)
 * answers have in common: a lock that became ours is remembered (released
 * by load_finish, whatever comes next); a Redis failure loads in process;
 * a current value there is answered (the check after the lock). Returns
 * true when that settled the load. */
static bool load_take_lock_answer(load *ld, int status, const rcache_lock_value *lv)
{
    if (lv != NULL && lv->acquired) {
        ld->locked = true;
        ld->lock_renewed_us = ld->lock_sent_us;
        ld->locked_us = ld->lock_sent_us;
    }
    if (shutting_down(ld))
        return true;
    if (status != RCACHE_OK) {
        /* The attempt may have taken the lock all the same (its answer late
         * past the deadline, or lost with the connection): released now
         * (token-guarded) or when Redis is back, and announced, or every
         * instance's requests for the key would wait --lock-ttl for a load
         * that stores nothing. */
        if (redis_usable(ld->lk))
            release_lock(ld->lk, ld->lock_key, ld->token, ld->key, true);
        else if (ld->lk->rc != NULL)
            abandon_lock(ld->lk, ld->lock_key, ld->token, ld->key);
        ld->local = true; /* Redis failed us: load in process */
        load_origin(ld);
        return true;
    }
    ld->gen_global = lv->v.gen_global;
    ld->gen_product = lv->v.gen_product;
    if (load_answer_from_entry(ld, &lv->v)) {
        if (lv->acquired)
            metrics_inc(M_LOADS_AVOIDED);
        return true;
    }
    return false;
}

static void on_check(void *arg, int status, const rcache_lock_value *lv)
{
    load *ld = arg;
    if (load_take_lock_answer(ld, status, lv))
        return;
    if (lv->acquired) {
        /* No value and no lock: the holder died or stored nothing. We took
         * the lock over in the same step; load now. */
        metrics_inc(M_LOCK_EXPIRED);
        load_origin(ld);
        return;
    }
    if (ld->recheck) {
        remote_read(ld);
        return;
    }
    int64_t pttl = lv->lock_pttl;
    /* A value is there, only older than a no-cache waiter: the lock may be
     * held by the load that stored it, about to release it with no
     * announcement (it announced the store). Check again soon rather than
     * sleep to the lock's expiry. */
    if (lv->v.entry != NULL && ld->no_cache_since_ms != 0 &&
        (pttl < 0 || pttl > NO_CACHE_RECHECK_MS))
        pttl = NO_CACHE_RECHECK_MS;
    load_wait_remote(ld, pttl); /* the holder is still loading */
}

void load_on_message(void *arg, const char *msg, size_t len)
{
    lookup *lk = arg;
    if (msg == NULL) {
        /* The subscriber is back: announcements may have been missed. */
        load *next;
        for (load *ld = lk->loads; ld != NULL; ld = next) {
            next = ld->next; /* the load may finish (free ld) */
            remote_check(ld);
        }
        return;
    }
    char key[KEY_MAX];
    if (len >= KEY_MAX)
        return;
    memcpy(key, msg, len);
    key[len] = '\0';
    /* A value was stored for key somewhere (or its load gave up): the copy
     * in process may be older, e.g. a no-cache load on another worker or
     * instance read a write this one has not heard of. Redis decides. */
    hot_drop(lk->hot, key);
    flight *f = flight_find(lk->flights, key);
    if (f != NULL)
        remote_check(flight_owner(f));
}

/* ---- the lock ---- */

static void on_lock(void *arg, int status, const rcache_lock_value *lv)
{
    load *ld = arg;
    if (load_take_lock_answer(ld, status, lv))
        return;
    if (lv->acquired) {
        metrics_inc(M_LOCK_ACQUIRED);
        load_origin(ld);
        return;
    }
    metrics_inc(M_LOCK_WAITED);
    /* Read again now, with the lock: the holder may have gone, or stored,
     * while our answer travelled (announcements that came meanwhile found
     * us LOCKING). */
    remote_read(ld);
}

void load_begin(load *ld)
{
    lookup *lk = ld->lk;
    if (!ld->local && redis_usable(lk)) {
        load_new_token(ld);
        ld->read_local = local_gen_of(lk, &ld->r);
        ld->lock_sent_us = mono_us();
        if (rcache_lock_read(lk->rc, ld->lock_key, ld->token, lk->cfg->lock_ttl_ms, ld->key,
                             lk->gen_global_key, &ld->gens, on_lock, ld) == 0) {
            load_set_state(ld, LS_LOCKING);
            return;
        }
    }
    ld->local = true;
    load_origin(ld);
}

void load_redis_down(lookup *lk)
{
    /* Loads waiting on another instance's lock would wait for an
     * announcement that cannot come: load in process now instead. */
    load *next;
    for (load *ld = lk->loads; ld != NULL; ld = next) {
        next = ld->next; /* the load may finish (free ld) */
        if (ld->state == LS_WAITING_REMOTE)
            remote_check(ld);
    }
}

/* Redis is back: the locks our loads could not release go now (each
 * guarded by its token: one that expired and was taken since is left
 * alone), each with the announcement that wakes its waiters. */
void load_redis_up(lookup *lk)
{
    size_t n = lk->nabandoned;
    struct abandoned_lock *all = xmalloc(n * sizeof(*all) + 1);
    memcpy(all, lk->abandoned, n * sizeof(*all));
    lk->nabandoned = lk->abandoned_next = 0;
    for (size_t i = 0; i < n; i++)
        release_lock(lk, all[i].lock_key, all[i].token, all[i].key, true);
    free(all);
}

void load_log_lease(const lookup *lk)
{
    const qc_config *cfg = lk->cfg;
    int longest = cfg->pg_timeout_ms + cfg->tax_timeout_ms;
    if (lk->rc != NULL && cfg->lock_ttl_ms < longest)
        log_info("lookup: --lock-ttl %d ms is shorter than the longest load (%d ms): a load "
                 "extends its lock every %d ms while it runs",
                 cfg->lock_ttl_ms, longest, (int)lock_lease_ms(lk));
}

void load_abort(load *ld)
{
    load_finish_error(ld, 503, "shutting_down", "the proxy is shutting down");
}
