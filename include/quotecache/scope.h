/* scope: what a change to the pricing data can touch, and the generation
 * counters that say so. Pure code.
 *
 * A quote (product P, region R, tier T, currency C) depends on five scoped
 * counters besides the global one:
 *   product           qc:<version>:{<P>}:gen           (as key.h)
 *   product in region qc:<version>:{<P>}:r:<R>:gen     (a promotion of P in R)
 *   currency          qc:<version>:fx:<C>:gen          (an fx_rates row)
 *   tier              qc:<version>:tier:<T>:gen        (a tiers row)
 *   region promotions qc:<version>:promo:<R>:gen       (a promotion of every product in R)
 * A change bumps the one counter of its scope; a hit reads all five with the
 * entry and the global counter (one MGET) and compares their sum with the
 * sum its load started under. Counters only grow (INCR), so the sum moves
 * whenever one of them does; Redis losing them is the global guard's case.
 * The first two share the entry's hash slot; the last three do not: in
 * Redis Cluster mode they are fields of one hash, mirrored in process
 * (rcache.h, rcache_new_cluster; README, "Invalidation").
 *
 * In process the same scopes bump hashed local counters (scope_bucket), so
 * the hot tier and the loads in flight honour them as well. */
#ifndef QUOTECACHE_SCOPE_H
#define QUOTECACHE_SCOPE_H

#include <stdint.h>

#include "quotecache/key.h"
#include "quotecache/request.h"

typedef enum scope_kind {
    SCOPE_PRODUCT,        /* product_id */
    SCOPE_PRODUCT_REGION, /* product_id, name = region */
    SCOPE_CURRENCY,       /* name = currency */
    SCOPE_TIER,           /* name = tier */
    SCOPE_REGION_PROMOS,  /* name = region */
    SCOPE_KINDS
} scope_kind;

/* One scope: what one invalidation covers. */
typedef struct scope {
    scope_kind kind;
    int64_t product_id; /* > 0 for the two product kinds, else 0 */
    char name[REQUEST_NAME_MAX + 1];
} scope;

/* The counters one quote reads, in scope_kind order. */
typedef struct scope_keys {
    char key[SCOPE_KINDS][KEY_MAX];
} scope_keys;

/* Writes the Redis counter of s into out ("" when version is unusable). */
void scope_key(char out[KEY_MAX], const char *version, const scope *s);
/* Fills out with the SCOPE_KINDS counters r depends on. */
void scope_keys_of(scope_keys *out, const char *version, const quote_req *r);
/* The scopes r depends on, in scope_kind order. */
void scope_of_quote(const quote_req *r, scope out[SCOPE_KINDS]);
/* The local counter bucket of s, < nbuckets (> 0). Distinct scopes may
 * share a bucket: then one drops the other's copies too, never fewer. */
uint32_t scope_bucket(const scope *s, uint32_t nbuckets);
/* A scope of kind with that name (folded as request.h folds it: regions and
 * currencies upper case, tiers lower case). Returns 0, or -1 when name
 * could not be in any quote (empty, too long, not letters, a currency not
 * of 3): no cached quote can be in that scope. */
int scope_named(scope *out, scope_kind kind, int64_t product_id, const char *name, size_t len);

#endif
