/* catalog: the small, slowly changing sets that validation and cache keys
 * need on every request — regions, tiers, currencies, and the promotions — kept in
 * process so that neither a hit nor a validation costs a database query.
 *
 * Loaded at start, reloaded on a timer and whenever catalog_reload is called
 * (invalidation does so on changes). Which promotions apply follows their
 * starts_at/ends_at to the millisecond (promoset.h), so a promotion starts
 * and stops applying (and the cache key changes) at the exact second, with
 * no timer and no write. */
#ifndef QUOTECACHE_CATALOG_H
#define QUOTECACHE_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quotecache/key.h"
#include "quotecache/pgpool.h"
#include "quotecache/promoset.h"

struct event_base;

typedef struct catalog catalog;

#define CATALOG_MAX_PROMOS_PER_QUOTE KEY_MAX_PROMOS

catalog *catalog_new(struct event_base *base, pgpool *pool, int refresh_ms);
void catalog_free(catalog *c);

/* Called after a reload asked for with catalog_reload has finished (with
 * ok false when it failed); reloads asked for meanwhile are folded into one,
 * so the call comes after a load that started after the last request. */
typedef void catalog_reloaded_cb(void *arg, bool ok);
void catalog_on_reload(catalog *c, catalog_reloaded_cb *cb, void *arg);

/* Called once, when the first load succeeds (not if it already has); cb
 * NULL unregisters. */
typedef void catalog_ready_cb(void *arg);
void catalog_on_ready(catalog *c, catalog_ready_cb *cb, void *arg);

/* True once a load has succeeded. */
bool catalog_ready(const catalog *c);
/* Starts a reload now (or right after the one in progress). */
void catalog_reload(catalog *c);

/* region: upper case, as the request normalizes it; the regions are those
 * regional_prices names. */
bool catalog_has_region(const catalog *c, const char *region);
bool catalog_has_tier(const catalog *c, const char *tier);
bool catalog_has_currency(const catalog *c, const char *currency);

/* The promotions active for (product, region) at now_ms (worked out once
 * per promotion boundary, see promoset.h); valid until the next call or
 * reload. An empty set before the first load. */
const promo_set *catalog_promo_set(catalog *c, int64_t product_id, const char *region,
                                   int64_t now_ms);
/* Writes the ids of the promotions active for (product, region) at now_ms,
 * ascending, into out (at most max). Returns their number, or -1 when there
 * are more than max. */
int catalog_active_promos(catalog *c, int64_t product_id, const char *region, int64_t now_ms,
                          int64_t *out, size_t max);

#endif
