/* invalidate: turns changes into dropped cache entries. Listens on a
 * dedicated PostgreSQL connection for the notifications that
 * scripts/sql/triggers.sql makes the database send, and serves the admin
 * purge. An invalidation bumps a generation counter in Redis (one INCR: every
 * instance sees it on its next read, since a hit requires the entry's
 * generations to equal the counters) and the local one (loads in flight on
 * this instance reload instead of storing what they read before).
 *
 * Why generations rather than deleting keys: a product has one key per
 * (region, tier, currency, promotion set), unknown to any one instance;
 * finding them would need a scan or an index to maintain. A counter is O(1)
 * to bump, costs nothing extra on the read path (it rides in the same MGET),
 * and doubles as the fence that stops a load begun before a write from
 * storing its result after it. Old entries simply expire by TTL. */
#ifndef QUOTECACHE_INVALIDATE_H
#define QUOTECACHE_INVALIDATE_H

#include <stdbool.h>
#include <stdint.h>

#include "quotecache/catalog.h"
#include "quotecache/config.h"
#include "quotecache/lookup.h"
#include "quotecache/rcache.h"

struct event_base;

typedef struct invalidator invalidator;

/* rc may be NULL. Starts listening at once (reconnecting by itself). */
invalidator *invalidate_new(struct event_base *base, const qc_config *cfg, lookup *lk, catalog *cat,
                            rcache *rc);
void invalidate_free(invalidator *inv);

/* Drops one product's quotes (product_id > 0) or everything (0). Returns 0,
 * or -1 when Redis is configured but the bump could not be sent (the local
 * part is applied in any case). */
int invalidate_product(invalidator *inv, int64_t product_id);

/* True while the LISTEN connection is up. */
bool invalidate_listening(const invalidator *inv);

#endif
