/* invalidate: owns the LISTEN connection (a one-connection pgpool), the
 * parsing of change notifications, the invalidations waiting for the
 * catalog to reload, the batch of Redis bumps of the current loop turn and
 * every bump in flight (a bump_op each). See invalidate.h for why
 * generations. */
#include "quotecache/invalidate.h"

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/key.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"
#include "quotecache/notify.h"
#include "quotecache/pgpool.h"
#include "quotecache/scope.h"
#include "quotecache/sql.h"

#define CHANNEL "quotecache"
#define MAX_PENDING 256 /* more distinct products than this: drop all */
/* Products bumped in Redis by one command at the end of a loop turn; more
 * than this in one turn (a bulk write) bump the global generation instead:
 * one INCR that drops everything costs less than thousands, and cannot be
 * refused piecemeal. */
#define BATCH_MAX 256
#define CATALOG_WAIT_MS 500 /* apply pending invalidations at the latest */
/* How often on_tick runs, and how long anything read before may be trusted
 * while the LISTEN path is down: see on_tick. */
#define WATCH_EVERY_MS 250
#define DOWN_TRUST_MS 1000
#define ONCE_TTL_MS 60000 /* how long a (transaction, product) bump is remembered */

/* One scope bump waiting in the batch (a product's, or another scope.h
 * scope's); txid "" when the payload named no transaction (then every
 * worker that hears it bumps). */
typedef struct batch_item {
    scope scope;
    char txid[NOTIFY_TXID_MAX + 1];
} batch_item;

struct invalidator {
    struct event_base *base;
    const qc_config *cfg;
    lookup *lk;
    catalog *cat;
    rcache *rc;
    pgpool *pool; /* the worker's: sends purge announcements */
    pgpool *listen;
    bool connected_once;
    /* Invalidations of changes the catalog also holds (promotions, tiers,
     * currencies): applied only once the catalog has reloaded, or requests
     * in between would compute keys from the old promotion set and store
     * them under the new generation. */
    bool pending_all;
    int64_t pending[MAX_PENDING];
    size_t npending;
    struct event *wait_timer;
    struct event *tick; /* WATCH_EVERY_MS, for as long as we live */
    bool listen_down;   /* this outage has been seen (and logged) */
    struct timeval last_catalog_reload;
    /* Redis bumps of the notifications of this loop turn, sent by flush_ev
     * (made active by the first one). */
    batch_item batch[BATCH_MAX];
    size_t nbatch;
    bool batch_all;
    bool flush_armed;
    int64_t batch_since_us; /* loop time of its oldest notification (0: empty) */
    struct event *flush_ev;
    struct bump_op *bump; /* in flight, at most one; detached on free */
};

/* Drops a product's quotes (0: everything) here and bumps its generation in
 * Redis at once (the admin purge, which waits for the answer). Returns 0
 * when the bump was sent (cb, if any, fires later); a bump Redis may not
 * have applied is owed by rcache and paid by a later global bump. */
static int drop(invalidator *inv, int64_t product_id, rcache_done_cb *cb, void *arg)
{
    char key[KEY_MAX];
    if (product_id > 0) {
        lookup_invalidate_product(inv->lk, product_id);
        key_product_gen(key, inv->cfg->key_version, product_id);
    } else {
        lookup_invalidate_all(inv->lk);
        key_global_gen(key, inv->cfg->key_version);
    }
    metrics_inc(M_INVALIDATIONS);
    return inv->rc != NULL ? rcache_bump(inv->rc, key, cb, arg) : -1;
}

/* ---- Redis bumps of change notifications ---- */

/* The bump command in flight: the batch's script or a global INCR. */
typedef struct bump_op {
    invalidator *inv; /* NULL once the invalidator is gone */
    bool global;
    int64_t since_us; /* its oldest notification, for the lag histogram */
} bump_op;

static void on_bumped(void *arg, int status, long long result);

/* The loop's cached time: a bump's lag is milliseconds at least. */
static int64_t loop_us(const invalidator *inv)
{
    struct timeval tv;
    event_base_gettimeofday_cached(inv->base, &tv);
    return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

/* A global bump that Redis refuses or loses is owed by rcache (rcache_bump)
 * and paid by its next global bump; a batch that fails falls back to one. */
static void bump_send(invalidator *inv, bool global, const batch_item *items, size_t n,
                      int64_t since_us)
{
    char keys[BATCH_MAX][KEY_MAX];
    char once[BATCH_MAX][KEY_MAX + NOTIFY_TXID_MAX + 2];
    const char *kv[BATCH_MAX], *ov[BATCH_MAX];
    bump_op *op = xcalloc(1, sizeof(*op));
    op->inv = inv;
    op->global = global;
    op->since_us = since_us;
    int rc;
    if (global) {
        key_global_gen(keys[0], inv->cfg->key_version);
        rc = rcache_bump(inv->rc, keys[0], on_bumped, op);
    } else {
        for (size_t i = 0; i < n; i++) {
            scope_key(keys[i], inv->cfg->key_version, &items[i].scope);
            once[i][0] = '\0';
            if (items[i].txid[0] != '\0')
                snprintf(once[i], sizeof(once[i]), "%s:%s", keys[i], items[i].txid);
            kv[i] = keys[i];
            ov[i] = once[i];
        }
        rc = rcache_bump_many(inv->rc, kv, ov, n, ONCE_TTL_MS, on_bumped, op);
    }
    if (rc == 0) {
        inv->bump = op;
        return;
    }
    free(op);
    if (!global)
        bump_send(inv, true, NULL, 0, since_us); /* refused: never drop one silently */
}

/* Sends what the batch holds as one command, unless one is in flight: then
 * its answer flushes, so a burst costs one command per Redis round trip
 * (not per notification, nor per loop turn) and the batch never waits
 * longer than that round trip (or its deadline). */
static void flush(invalidator *inv)
{
    if (inv->bump != NULL)
        return;
    batch_item items[BATCH_MAX];
    size_t n = inv->nbatch;
    bool all = inv->batch_all;
    memcpy(items, inv->batch, n * sizeof(items[0]));
    int64_t since = inv->batch_since_us;
    inv->nbatch = 0;
    inv->batch_all = false;
    inv->batch_since_us = 0;
    if (inv->rc == NULL || (!all && n == 0))
        return;
    bump_send(inv, all, items, n, since);
}

/* A batch that failed (or timed out: it may still land, but nobody can
 * tell) falls back to the global generation; a global one that failed is
 * owed by rcache. */
static void on_bumped(void *arg, int status, long long result)
{
    (void)result;
    bump_op *op = arg;
    invalidator *inv = op->inv;
    bool global = op->global;
    int64_t since = op->since_us;
    free(op);
    if (inv == NULL)
        return;
    inv->bump = NULL;
    if (status == RCACHE_OK && since != 0)
        metrics_observe_us(H_INVALIDATION_LAG, 0, loop_us(inv) - since);
    if (status != RCACHE_OK && !global) {
        inv->batch_all = true; /* its notifications wait on, in the next batch */
        if (inv->batch_since_us == 0 || since < inv->batch_since_us)
            inv->batch_since_us = since;
    }
    if (inv->nbatch > 0 || inv->batch_all)
        flush(inv);
}

static void on_flush(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    invalidator *inv = arg;
    inv->flush_armed = false;
    flush(inv);
}

/* Drops a scope's quotes (NULL: everything) here at once, and queues its
 * Redis bump: sent at the end of this loop turn, with every other
 * notification of the turn, or when the bump in flight answers. txid: the
 * writing transaction ("" if unknown), so the fleet bumps once for it. */
static void invalidate_scope_soon(invalidator *inv, const scope *s, const char *txid)
{
    if (s != NULL)
        lookup_invalidate_scope(inv->lk, s);
    else
        lookup_invalidate_all(inv->lk);
    metrics_inc(M_INVALIDATIONS);
    if (inv->batch_since_us == 0)
        inv->batch_since_us = loop_us(inv);
    if (s == NULL || inv->nbatch == BATCH_MAX) {
        inv->batch_all = true;
    } else if (!inv->batch_all) {
        batch_item *it = &inv->batch[inv->nbatch++];
        it->scope = *s;
        snprintf(it->txid, sizeof(it->txid), "%s", txid);
    }
    if (!inv->flush_armed && inv->bump == NULL) {
        inv->flush_armed = true;
        event_active(inv->flush_ev, EV_TIMEOUT, 1);
    }
}

/* One admin purge waiting for its Redis bump and its announcement. Owned by
 * itself: freed when the last of them has answered (and the submit is
 * over, hence the guard step fired from the loop). */
typedef struct purge_op {
    int pending;
    bool ok;
    invalidate_done_cb *cb;
    void *arg;
    struct event *guard;
} purge_op;

static void purge_step(purge_op *op, bool ok)
{
    op->ok = op->ok || ok;
    if (--op->pending > 0)
        return;
    op->cb(op->arg, op->ok);
    event_free(op->guard);
    free(op);
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    purge_step(arg, false);
}

static void on_purge_bumped(void *arg, int status, long long result)
{
    (void)result;
    purge_step(arg, status == RCACHE_OK);
}

static void on_purge_announced(void *arg, const PGresult *res, const qc_error *err)
{
    (void)res;
    if (err != NULL)
        log_warn("invalidate: purge announcement failed: %s", err->message);
    purge_step(arg, err == NULL);
}

void invalidate_purge(invalidator *inv, int64_t product_id, invalidate_done_cb *cb, void *arg)
{
    purge_op *op = xcalloc(1, sizeof(*op));
    op->cb = cb;
    op->arg = arg;
    op->pending = 1;
    op->guard = event_new(inv->base, -1, 0, on_guard, op);
    if (drop(inv, product_id, on_purge_bumped, op) == 0)
        op->pending++;
    char payload[32];
    if (product_id > 0)
        snprintf(payload, sizeof(payload), "admin:%lld", (long long)product_id);
    else
        snprintf(payload, sizeof(payload), "admin:*");
    const char *params[1] = {payload};
    qc_error err;
    if (pgpool_query(inv->pool, SQL_NOTIFY, params, on_purge_announced, op, &err) == 0)
        op->pending++;
    else
        log_warn("invalidate: purge not announced: %s", err.message);
    event_active(op->guard, EV_TIMEOUT, 1);
}

/* A product's quotes (0: everything): invalidate_scope_soon. */
static void invalidate_soon(invalidator *inv, int64_t product_id, const char *txid)
{
    scope s = {.kind = SCOPE_PRODUCT, .product_id = product_id};
    invalidate_scope_soon(inv, product_id > 0 ? &s : NULL, txid);
}

static void apply_pending(invalidator *inv)
{
    evtimer_del(inv->wait_timer);
    if (inv->pending_all) {
        invalidate_soon(inv, 0, "");
    } else {
        for (size_t i = 0; i < inv->npending; i++)
            invalidate_soon(inv, inv->pending[i], "");
    }
    inv->pending_all = false;
    inv->npending = 0;
}

static void on_catalog_reloaded(void *arg, bool ok)
{
    (void)ok; /* even a failed reload must not hold an invalidation back */
    invalidator *inv = arg;
    if (inv->pending_all || inv->npending > 0)
        apply_pending(inv);
}

static void on_wait_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    apply_pending(arg);
}

static void defer_until_catalog(invalidator *inv, int64_t product_id)
{
    if (product_id == 0 || inv->npending == MAX_PENDING) {
        inv->pending_all = true;
    } else {
        bool seen = false;
        for (size_t i = 0; i < inv->npending && !seen; i++)
            seen = inv->pending[i] == product_id;
        if (!seen)
            inv->pending[inv->npending++] = product_id;
    }
    if (!evtimer_pending(inv->wait_timer, NULL)) {
        struct timeval tv = {0, CATALOG_WAIT_MS * 1000};
        evtimer_add(inv->wait_timer, &tv);
    }
    catalog_reload(inv->cat);
}

/* An admin purge announced by the worker that made it: that worker bumped
 * Redis already (or owes the bump), so the others only drop what they hold
 * in process; bumping again from every worker of every instance would
 * empty the shared cache N x W more times and reload hot keys in between. */
static void drop_here(invalidator *inv, int64_t product_id)
{
    if (product_id > 0)
        lookup_invalidate_product(inv->lk, product_id);
    else
        lookup_invalidate_all(inv->lk);
    metrics_inc(M_INVALIDATIONS);
}

static bool table_is(const notify_msg *m, const char *name)
{
    return m->table_len == strlen(name) && strcmp(m->table, name) == 0;
}

/* A change notification (notify.h says the payload grammar: triggers.sql's,
 * or "admin:..." from invalidate_purge on any instance). */
static void on_notify(void *arg, const char *payload)
{
    invalidator *inv = arg;
    notify_msg m;
    if (notify_parse(payload, &m) < 0) {
        log_warn("invalidate: ignoring notification '%.64s'", payload);
        return;
    }
    log_debug("invalidate: %s", payload);
    /* The catalog holds the set of regions: a price row may add one. The
     * reload is coalesced (one at a time, one more if asked meanwhile), so a
     * bulk price update costs one or two catalog queries per worker. */
    if (table_is(&m, "regional_prices") || m.reload_catalog)
        catalog_reload(inv->cat);
    if (table_is(&m, "admin"))
        drop_here(inv, m.product_id);
    else if (m.in_catalog)
        defer_until_catalog(inv, m.product_id); /* an older trigger's payload */
    else if (m.reach == NOTIFY_REACH_SCOPE)
        invalidate_scope_soon(inv, &m.scope, m.txid);
    else if (m.reach == NOTIFY_REACH_PRODUCT)
        invalidate_soon(inv, m.product_id, m.txid);
}

/* Notifications sent while we were not listening are lost for good: after
 * a reconnect, anything may have changed. */
static void on_listen_ready(void *arg)
{
    invalidator *inv = arg;
    if (!inv->connected_once) {
        inv->connected_once = true;
        log_info("invalidate: listening for changes");
        return;
    }
    metrics_inc(M_LISTEN_RECONNECTS);
    log_warn("invalidate: LISTEN connection back; dropping everything cached");
    defer_until_catalog(inv, 0);
}

static long ms_since(const struct timeval *then, const struct timeval *now)
{
    return (long)(now->tv_sec - then->tv_sec) * 1000 + (now->tv_usec - then->tv_usec) / 1000;
}

/* What a pricing cache must do while it cannot hear of changes: a write
 * committed meanwhile is unknown to it, so nothing it holds may be trusted
 * for long. While the LISTEN path is down (after having been up), no copy is
 * fresh past DOWN_TRUST_MS of age (lookup_set_trust): an older one is
 * reloaded before it is served, and served STALE only if that load fails
 * (PostgreSQL down: the spec's stale-if-error, within the usual horizon);
 * the catalog (promotions, tiers, currencies) is reloaded every
 * DOWN_TRUST_MS too. The policy is local: the shared cache is not emptied
 * for instances that still hear of changes and bump the generations. The
 * reconnect drops everything (on_listen_ready): notifications sent
 * meanwhile are lost for good. */
static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    invalidator *inv = arg;
    if (!inv->connected_once || invalidate_listening(inv)) {
        if (inv->listen_down)
            lookup_set_trust(inv->lk, 0);
        inv->listen_down = false;
        return;
    }
    struct timeval now;
    event_base_gettimeofday_cached(inv->base, &now);
    if (inv->listen_down && ms_since(&inv->last_catalog_reload, &now) < DOWN_TRUST_MS)
        return;
    if (!inv->listen_down) {
        log_warn("invalidate: not listening for changes; nothing cached is trusted for more "
                 "than %d ms until the LISTEN connection is back",
                 DOWN_TRUST_MS);
        lookup_set_trust(inv->lk, DOWN_TRUST_MS);
    }
    inv->listen_down = true;
    inv->last_catalog_reload = now;
    catalog_reload(inv->cat);
}

invalidator *invalidate_new(struct event_base *base, const qc_config *cfg, lookup *lk, catalog *cat,
                            rcache *rc, pgpool *pool)
{
    invalidator *inv = xcalloc(1, sizeof(*inv));
    inv->base = base;
    inv->cfg = cfg;
    inv->lk = lk;
    inv->cat = cat;
    inv->rc = rc;
    inv->pool = pool;
    inv->wait_timer = evtimer_new(base, on_wait_timer, inv);
    inv->flush_ev = event_new(base, -1, 0, on_flush, inv);
    inv->tick = event_new(base, -1, EV_PERSIST, on_tick, inv);
    struct timeval every = {0, WATCH_EVERY_MS * 1000};
    event_add(inv->tick, &every);
    catalog_on_reload(cat, on_catalog_reloaded, inv);
    inv->listen = pgpool_new(base, cfg->postgres, 1, cfg->pg_timeout_ms, 1, NULL, 0);
    pgpool_listen(inv->listen, CHANNEL, on_notify, on_listen_ready, inv);
    return inv;
}

void invalidate_free(invalidator *inv)
{
    if (inv == NULL)
        return;
    catalog_on_reload(inv->cat, NULL, NULL);
    pgpool_free(inv->listen);
    event_free(inv->wait_timer);
    event_free(inv->tick);
    event_free(inv->flush_ev); /* a batch not flushed yet: the process is ending */
    if (inv->bump != NULL)
        inv->bump->inv = NULL; /* rcache_free answers it later */
    free(inv);
}

bool invalidate_listening(const invalidator *inv)
{
    return pgpool_is_up(inv->listen);
}
