/* invalidate: owns the LISTEN connection (a one-connection pgpool), the
 * parsing of change notifications, and the invalidations waiting for the
 * catalog to reload. See invalidate.h for why generations. */
#include "quotecache/invalidate.h"

#include <errno.h>
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/key.h"
#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"
#include "quotecache/pgpool.h"
#include "quotecache/sql.h"

#define CHANNEL "quotecache"
#define MAX_PENDING 256     /* more distinct products than this: drop all */
#define CATALOG_WAIT_MS 500 /* apply pending invalidations at the latest */
#define ONCE_TTL_MS 60000   /* how long a (transaction, product) bump is remembered */
#define TXID_MAX 20

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
};

/* Drops a product's quotes (0: everything) here and bumps its generation in
 * Redis. Returns 0 when the bump was sent (cb, if any, fires later). */
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

/* Like drop, for a change that names its transaction (txid: digits): every
 * worker of every instance is told of it, and the first to reach Redis
 * bumps for all of them (rcache_bump_once, keyed by generation and txid). */
static void drop_once(invalidator *inv, int64_t product_id, const char *txid)
{
    char key[KEY_MAX], once[KEY_MAX + TXID_MAX + 2];
    if (inv->rc == NULL) {
        drop(inv, product_id, NULL, NULL);
        return;
    }
    if (product_id > 0) {
        lookup_invalidate_product(inv->lk, product_id);
        key_product_gen(key, inv->cfg->key_version, product_id);
    } else {
        lookup_invalidate_all(inv->lk);
        key_global_gen(key, inv->cfg->key_version);
    }
    metrics_inc(M_INVALIDATIONS);
    snprintf(once, sizeof(once), "%s:%s", key, txid);
    rcache_bump_once(inv->rc, key, once, ONCE_TTL_MS, NULL, NULL);
}

/* "<table>:<txid>" at the head of a payload: copies the txid out and
 * shortens the table; a head that is not that is left alone. */
static void split_txid(const char *payload, size_t *tlen, char txid[TXID_MAX + 1])
{
    const char *mid = memchr(payload, ':', *tlen);
    txid[0] = '\0';
    if (mid == NULL)
        return;
    size_t n = *tlen - (size_t)(mid + 1 - payload);
    if (n == 0 || n > TXID_MAX || strspn(mid + 1, "0123456789") < n)
        return;
    memcpy(txid, mid + 1, n);
    txid[n] = '\0';
    *tlen = (size_t)(mid - payload);
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

static void apply_pending(invalidator *inv)
{
    evtimer_del(inv->wait_timer);
    if (inv->pending_all) {
        drop(inv, 0, NULL, NULL);
    } else {
        for (size_t i = 0; i < inv->npending; i++)
            drop(inv, inv->pending[i], NULL, NULL);
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

/* Payload "<table>:<product id>" or "<table>:*", or the same with the
 * transaction in between, "<table>:<txid>:<product id>" (triggers.sql), or
 * "admin:..." (invalidate_purge on any instance). */
static void on_notify(void *arg, const char *payload)
{
    invalidator *inv = arg;
    const char *colon = strrchr(payload, ':');
    if (colon == NULL) {
        log_warn("invalidate: ignoring notification '%.64s'", payload);
        return;
    }
    int64_t product_id = 0;
    if (strcmp(colon + 1, "*") != 0) {
        char *end;
        errno = 0;
        long long v = strtoll(colon + 1, &end, 10);
        if (errno != 0 || *end != '\0' || v <= 0) {
            log_warn("invalidate: ignoring notification '%.64s'", payload);
            return;
        }
        product_id = v;
    }
    size_t tlen = (size_t)(colon - payload);
    char txid[TXID_MAX + 1];
    split_txid(payload, &tlen, txid);
    bool in_catalog = (tlen == 10 && strncmp(payload, "promotions", tlen) == 0) ||
                      (tlen == 5 && strncmp(payload, "tiers", tlen) == 0) ||
                      (tlen == 8 && strncmp(payload, "fx_rates", tlen) == 0);
    log_debug("invalidate: %s", payload);
    if (in_catalog)
        defer_until_catalog(inv, product_id);
    else if (txid[0] != '\0')
        drop_once(inv, product_id, txid);
    else
        drop(inv, product_id, NULL, NULL);
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
    free(inv);
}

bool invalidate_listening(const invalidator *inv)
{
    return pgpool_is_up(inv->listen);
}
