/* invalidate: turns changes into dropped cache entries. Listens on a
 * dedicated PostgreSQL connection for the notifications that
 * scripts/sql/triggers.sql makes the database send, and serves the admin
 * purge. An invalidation bumps the generation counter of the change's scope
 * (scope.h: a product, a product in a region, a currency, a tier, a
 * region's promotions; or the global one) in Redis (every instance sees it
 * on its next read, since a hit requires the entry's generations to equal
 * the counters) and the local one at once (loads in flight on this
 * instance reload instead of storing what they read before).
 * The Redis bumps of one loop turn travel as one command; a bulk write (over
 * 256 products in a batch) or a bump that fails bumps the global counter
 * instead, and a global bump that fails is owed and retried: an
 * invalidation is never dropped silently.
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
#include "quotecache/pgpool.h"
#include "quotecache/rcache.h"

struct event_base;

typedef struct invalidator invalidator;

/* rc may be NULL; pool is the worker's query pool (for purge
 * announcements). Starts listening at once (reconnecting by itself). */
invalidator *invalidate_new(struct event_base *base, const qc_config *cfg, lookup *lk, catalog *cat,
                            rcache *rc, pgpool *pool);
void invalidate_free(invalidator *inv);

/* The admin purge: drops one product's quotes (product_id > 0) or
 * everything (0) here, bumps the generation in Redis, and sends a notification
 * "admin:<id>" (or "admin:*") on the same channel as the triggers', so every
 * other worker and instance drops its in-process copies too, with or without
 * Redis. cb fires exactly once, later, when the Redis bump and the
 * announcement have both been answered: ok when at least one of them, the
 * two ways other instances learn of it, went through. */
typedef void invalidate_done_cb(void *arg, bool ok);
void invalidate_purge(invalidator *inv, int64_t product_id, invalidate_done_cb *cb, void *arg);

/* True while the LISTEN connection is up and answers its heartbeat (a
 * backend that went silent is noticed within about 3 s). While it is not,
 * nothing cached is trusted for more than about a second (see README). */
bool invalidate_listening(const invalidator *inv);

#endif
