/* promoset: which promotions apply to (product, region), worked out once
 * per promotion boundary instead of scanned and sorted per request. Pure:
 * no I/O; the caller passes the time.
 *
 * The sets are computed for one interval of time, between the start or end
 * of any promotion at or before now and the next one after; the first
 * lookup outside it (a boundary passed, or the clock went back past one)
 * recomputes them all, so a promotion
 * applies, and stops applying, at the very millisecond of its bounds. A
 * product with no promotion of its own shares the set of promotions for
 * every product. */
#ifndef QUOTECACHE_PROMOSET_H
#define QUOTECACHE_PROMOSET_H

#include <stddef.h>
#include <stdint.h>

#include "quotecache/key.h"
#include "quotecache/request.h"

typedef struct promo_def {
    int64_t product_id; /* 0: every product */
    int64_t id;
    char region[REQUEST_NAME_MAX + 1]; /* "": every region */
    int64_t starts_ms, ends_ms;        /* applies for starts_ms <= now < ends_ms */
} promo_def;

/* The promotions active for one (product, region): ids ascending. */
typedef struct promo_set {
    int n;              /* -1: more than KEY_MAX_PROMOS (the request cannot be keyed) */
    uint64_t hash;      /* of the ids: equal sets, equal hashes */
    const int64_t *ids; /* valid until the next promoset_get or promoset_free */
} promo_set;

typedef struct promoset promoset;

/* Copies defs (any order). */
promoset *promoset_new(const promo_def *defs, size_t n);
void promoset_free(promoset *ps);
/* The set for (product_id, region) at now_ms (recomputing when now_ms is
 * past the interval the sets were computed for). */
const promo_set *promoset_get(promoset *ps, int64_t product_id, const char *region, int64_t now_ms);

#endif
