/* catalog: owns the in-process copy of regions, tiers, currencies and promotions,
 * and the reload cycle that keeps it current. */
#include "quotecache/catalog.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/log.h"
#include "quotecache/mem.h"
#include "quotecache/request.h"
#include "quotecache/sql.h"

/* One consistent snapshot; replaced whole on each successful load. */
typedef struct snapshot {
    char **regions;
    size_t nregions;
    char **tiers;
    size_t ntiers;
    char **currencies;
    size_t ncurrencies;
    promoset *promos;
    size_t npromos;
} snapshot;

struct catalog {
    struct event_base *base;
    pgpool *pool;
    struct event *timer;
    int refresh_ms;
    snapshot *snap;
    bool loading;
    bool again; /* a reload was asked for while one was running */
    catalog_reloaded_cb *on_reload;
    void *on_reload_arg;
    catalog_ready_cb *on_ready;
    void *on_ready_arg;
};

static void snapshot_free(snapshot *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->nregions; i++)
        free(s->regions[i]);
    for (size_t i = 0; i < s->ntiers; i++)
        free(s->tiers[i]);
    for (size_t i = 0; i < s->ncurrencies; i++)
        free(s->currencies[i]);
    free(s->regions);
    free(s->tiers);
    free(s->currencies);
    promoset_free(s->promos);
    free(s);
}

static int64_t field_int(const PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? 0 : strtoll(PQgetvalue(r, row, col), NULL, 10);
}

static snapshot *snapshot_from(const PGresult *r)
{
    int n = PQntuples(r);
    snapshot *s = xcalloc(1, sizeof(*s));
    s->regions = xcalloc((size_t)n + 1, sizeof(char *));
    s->tiers = xcalloc((size_t)n + 1, sizeof(char *));
    s->currencies = xcalloc((size_t)n + 1, sizeof(char *));
    promo_def *defs = xcalloc((size_t)n + 1, sizeof(promo_def));
    for (int i = 0; i < n; i++) {
        char kind = PQgetvalue(r, i, 0)[0];
        if (kind == 'r') {
            s->regions[s->nregions++] = xstrdup(PQgetvalue(r, i, 1));
        } else if (kind == 't') {
            s->tiers[s->ntiers++] = xstrdup(PQgetvalue(r, i, 1));
        } else if (kind == 'c') {
            s->currencies[s->ncurrencies++] = xstrdup(PQgetvalue(r, i, 1));
        } else if (kind == 'p') {
            promo_def *p = &defs[s->npromos++];
            p->id = field_int(r, i, 2);
            p->product_id = field_int(r, i, 3);
            if (!PQgetisnull(r, i, 4))
                snprintf(p->region, sizeof(p->region), "%s", PQgetvalue(r, i, 4));
            p->starts_ms = field_int(r, i, 5);
            p->ends_ms = field_int(r, i, 6);
        }
    }
    s->promos = promoset_new(defs, s->npromos);
    free(defs);
    return s;
}

static void schedule(catalog *c, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static void catalog_start_load(catalog *c);

static void on_loaded(void *arg, const PGresult *res, const qc_error *err)
{
    catalog *c = arg;
    c->loading = false;
    if (res == NULL) {
        log_warn("catalog: reload failed: %s", err->message);
        c->again = false;
        /* Retry soon: a change may be waiting on this reload. */
        schedule(c, 250);
        if (c->on_reload)
            c->on_reload(c->on_reload_arg, false);
        return;
    }
    snapshot *fresh = snapshot_from(res);
    bool first = c->snap == NULL;
    snapshot_free(c->snap);
    c->snap = fresh;
    if (first)
        log_info("catalog: %zu regions, %zu tiers, %zu currencies, %zu promotions", fresh->nregions,
                 fresh->ntiers, fresh->ncurrencies, fresh->npromos);
    if (first && c->on_ready) {
        catalog_ready_cb *cb = c->on_ready;
        c->on_ready = NULL; /* once */
        cb(c->on_ready_arg);
    }
    if (c->again) {
        c->again = false;
        catalog_start_load(c);
        return;
    }
    schedule(c, c->refresh_ms);
    if (c->on_reload)
        c->on_reload(c->on_reload_arg, true);
}

static void catalog_start_load(catalog *c)
{
    qc_error err;
    if (pgpool_query(c->pool, SQL_CATALOG, NULL, on_loaded, c, &err) < 0) {
        /* PostgreSQL not up yet (start-up) or gone: try again soon. */
        schedule(c, 250);
        return;
    }
    c->loading = true;
}

void catalog_on_reload(catalog *c, catalog_reloaded_cb *cb, void *arg)
{
    c->on_reload = cb;
    c->on_reload_arg = arg;
}

void catalog_on_ready(catalog *c, catalog_ready_cb *cb, void *arg)
{
    c->on_ready = cb;
    c->on_ready_arg = arg;
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    catalog *c = arg;
    if (!c->loading)
        catalog_start_load(c);
}

catalog *catalog_new(struct event_base *base, pgpool *pool, int refresh_ms)
{
    catalog *c = xcalloc(1, sizeof(*c));
    c->base = base;
    c->pool = pool;
    c->refresh_ms = refresh_ms;
    c->timer = evtimer_new(base, on_timer, c);
    schedule(c, 0);
    return c;
}

void catalog_free(catalog *c)
{
    if (c == NULL)
        return;
    /* The owner frees the pool first: its shutdown answers a pending load
     * into this catalog, which must still exist then. */
    event_free(c->timer);
    snapshot_free(c->snap);
    free(c);
}

bool catalog_ready(const catalog *c)
{
    return c->snap != NULL;
}

void catalog_reload(catalog *c)
{
    if (c->loading) {
        c->again = true;
        return;
    }
    evtimer_del(c->timer);
    catalog_start_load(c);
}

static bool in_set(char *const *set, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(set[i], s) == 0)
            return true;
    }
    return false;
}

bool catalog_has_region(const catalog *c, const char *region)
{
    return c->snap && in_set(c->snap->regions, c->snap->nregions, region);
}

bool catalog_has_tier(const catalog *c, const char *tier)
{
    return c->snap && in_set(c->snap->tiers, c->snap->ntiers, tier);
}

bool catalog_has_currency(const catalog *c, const char *currency)
{
    return c->snap && in_set(c->snap->currencies, c->snap->ncurrencies, currency);
}

const promo_set *catalog_promo_set(catalog *c, int64_t product_id, const char *region,
                                   int64_t now_ms)
{
    static const promo_set none = {0, 0, NULL};
    if (c->snap == NULL)
        return &none;
    return promoset_get(c->snap->promos, product_id, region, now_ms);
}

int catalog_active_promos(catalog *c, int64_t product_id, const char *region, int64_t now_ms,
                          int64_t *out, size_t max)
{
    const promo_set *set = catalog_promo_set(c, product_id, region, now_ms);
    if (set->n < 0 || (size_t)set->n > max)
        return -1;
    if (set->n > 0)
        memcpy(out, set->ids, (size_t)set->n * sizeof(int64_t));
    return set->n;
}
