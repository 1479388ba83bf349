/* promoset: owns the promotion definitions of one catalog snapshot and the
 * sets computed from them for the current interval between boundaries.
 *
 * Layout: the distinct product ids that have promotions of their own, with
 * 0 first; the distinct regions promotions name, plus one "other" region
 * (only promotions for every region apply there). The set of (product p,
 * region r) is sets[p_index * (nregions + 1) + r]; a product with none of
 * its own uses p_index 0. */
#include "quotecache/promoset.h"

#include <stdlib.h>
#include <string.h>

#include "quotecache/mem.h"

struct promoset {
    promo_def *defs; /* sorted by (product_id, id) */
    size_t ndefs;
    int64_t *products; /* distinct product ids, ascending, 0 first */
    size_t nproducts;
    char (*regions)[REQUEST_NAME_MAX + 1]; /* distinct named regions */
    size_t nregions;
    promo_set *sets;
    int64_t *ids; /* the storage the sets point into */
    size_t ids_cap;
    int64_t *scratch;          /* ndefs + 1 */
    int64_t from_ms, until_ms; /* the interval the sets are for */
    int computed;
};

static int def_cmp(const void *a, const void *b)
{
    const promo_def *x = a, *y = b;
    if (x->product_id != y->product_id)
        return x->product_id < y->product_id ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static size_t region_index(const promoset *ps, const char *region)
{
    for (size_t i = 0; i < ps->nregions; i++) {
        if (strcmp(ps->regions[i], region) == 0)
            return i;
    }
    return ps->nregions; /* other */
}

promoset *promoset_new(const promo_def *defs, size_t n)
{
    promoset *ps = xcalloc(1, sizeof(*ps));
    ps->defs = xcalloc(n + 1, sizeof(promo_def));
    if (n > 0)
        memcpy(ps->defs, defs, n * sizeof(promo_def));
    ps->ndefs = n;
    qsort(ps->defs, n, sizeof(promo_def), def_cmp);
    ps->products = xcalloc(n + 1, sizeof(int64_t));
    ps->regions = xcalloc(n + 1, sizeof(*ps->regions));
    ps->nproducts = 1; /* products[0] = 0 */
    for (size_t i = 0; i < n; i++) {
        const promo_def *d = &ps->defs[i];
        if (d->product_id != ps->products[ps->nproducts - 1])
            ps->products[ps->nproducts++] = d->product_id;
        if (d->region[0] != '\0' && region_index(ps, d->region) == ps->nregions)
            memcpy(ps->regions[ps->nregions++], d->region, sizeof(d->region));
    }
    size_t nsets = ps->nproducts * (ps->nregions + 1);
    ps->sets = xcalloc(nsets, sizeof(promo_set));
    ps->scratch = xcalloc(n + 1, sizeof(int64_t));
    return ps;
}

void promoset_free(promoset *ps)
{
    if (ps == NULL)
        return;
    free(ps->defs);
    free(ps->products);
    free(ps->regions);
    free(ps->sets);
    free(ps->ids);
    free(ps->scratch);
    free(ps);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t ids_hash(const int64_t *ids, int n)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n;
    for (int i = 0; i < n; i++) {
        h ^= (uint64_t)ids[i];
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    return h;
}

static int def_applies(const promo_def *d, const char *region, int64_t now_ms)
{
    return (d->region[0] == '\0' || (region != NULL && strcmp(d->region, region) == 0)) &&
           d->starts_ms <= now_ms && now_ms < d->ends_ms;
}

/* The set of products[p] in region (NULL: other), into out (ndefs + 1). */
static int compute_set(const promoset *ps, size_t p, const char *region, int64_t now_ms,
                       promo_set *set, int64_t *out)
{
    int n = 0;
    for (size_t i = 0; i < ps->ndefs; i++) {
        const promo_def *d = &ps->defs[i];
        if ((d->product_id == 0 || d->product_id == ps->products[p]) &&
            def_applies(d, region, now_ms))
            out[n++] = d->id;
    }
    qsort(out, (size_t)n, sizeof(int64_t), cmp_i64);
    set->n = n > KEY_MAX_PROMOS ? -1 : n;
    set->hash = ids_hash(out, n);
    return n;
}

/* Computes every set for the interval that contains now_ms. Not inlined:
 * it runs once per boundary or reload, and profiles should name it. */
__attribute__((noinline)) static void sets_compute(promoset *ps, int64_t now_ms)
{
    size_t stride = ps->nregions + 1, nsets = ps->nproducts * stride, used = 0;
    size_t *offset = xcalloc(nsets, sizeof(size_t));
    for (size_t i = 0; i < nsets; i++) {
        size_t r = i % stride;
        int n = compute_set(ps, i / stride, r < ps->nregions ? ps->regions[r] : NULL, now_ms,
                            &ps->sets[i], ps->scratch);
        if (used + (size_t)n + 1 > ps->ids_cap) {
            ps->ids_cap = 2 * (used + (size_t)n + 1);
            ps->ids = xrealloc(ps->ids, ps->ids_cap * sizeof(int64_t));
        }
        memcpy(ps->ids + used, ps->scratch, (size_t)n * sizeof(int64_t));
        offset[i] = used;
        used += (size_t)n;
    }
    for (size_t i = 0; i < nsets; i++) /* the storage has settled: point into it */
        ps->sets[i].ids = ps->ids + offset[i];
    free(offset);
    /* The interval between the boundaries around now_ms: a time a little
     * earlier (the loop's cached clock) finds the same sets. */
    int64_t from = INT64_MIN, until = INT64_MAX;
    for (size_t i = 0; i < ps->ndefs; i++) {
        const int64_t b[2] = {ps->defs[i].starts_ms, ps->defs[i].ends_ms};
        for (int j = 0; j < 2; j++) {
            if (b[j] > now_ms && b[j] < until)
                until = b[j];
            if (b[j] <= now_ms && b[j] > from)
                from = b[j];
        }
    }
    ps->from_ms = from;
    ps->until_ms = until;
    ps->computed = 1;
}

/* Index of product_id in products, or 0 (every product) when it has none
 * of its own. */
static size_t product_index(const promoset *ps, int64_t product_id)
{
    size_t lo = 1, hi = ps->nproducts;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ps->products[mid] < product_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < ps->nproducts && ps->products[lo] == product_id ? lo : 0;
}

const promo_set *promoset_get(promoset *ps, int64_t product_id, const char *region, int64_t now_ms)
{
    if (!ps->computed || now_ms < ps->from_ms || now_ms >= ps->until_ms)
        sets_compute(ps, now_ms);
    size_t p = product_index(ps, product_id);
    return &ps->sets[p * (ps->nregions + 1) + region_index(ps, region)];
}
