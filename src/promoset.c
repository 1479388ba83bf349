/* promoset: owns the promotion definitions of one catalog snapshot and the
 * sets computed from them for the current interval between boundaries.
 *
 * Layout: the distinct product ids that have promotions of their own, with
 * 0 first; the distinct regions promotions name, plus one "other" region
 * (only promotions for every region apply there). The set of (product p,
 * region r) is sets[p_index * (nregions + 1) + r]; a product with none of
 * its own uses p_index 0.
 *
 * A recompute is O(pairs + promotions), not O(pairs x promotions): the
 * definitions are indexed by product (a range of the sorted array each) and
 * by region (an index per definition), the active ones of a product
 * bucketed by region, and a set is the merge of the "every product"
 * bucket of its region with the product's own; a pair with nothing of its
 * own shares the "every product" set's storage. */
#include "quotecache/promoset.h"

#include <stdlib.h>
#include <string.h>

#include "quotecache/mem.h"

typedef struct def_range {
    size_t lo, hi; /* defs[lo, hi) */
} def_range;

struct promoset {
    promo_def *defs;    /* sorted by (product_id, id) */
    size_t *def_region; /* region index of each def; nregions: every region */
    size_t ndefs;
    int64_t *products; /* distinct product ids, ascending, 0 first */
    def_range *own;    /* the defs of products[p]; own[0]: those for every product */
    size_t nproducts;
    char (*regions)[REQUEST_NAME_MAX + 1]; /* distinct named regions */
    size_t nregions;
    promo_set *sets;
    def_range *span; /* per set, its ids: ids[lo, hi) (offsets until the storage settles) */
    int64_t *ids;    /* the storage the sets point into */
    size_t ids_cap;
    int64_t *every, *mine;      /* ndefs + 1: the active "every product" / own ids, by region */
    size_t *every_at, *mine_at; /* nregions + 2: where each region's bucket starts */
    int64_t from_ms, until_ms;  /* the interval the sets are for */
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

/* The products with promotions of their own, each with its range of defs
 * (sorted: contiguous), and the regions named. */
static void index_defs(promoset *ps)
{
    ps->nproducts = 1; /* products[0] = 0 */
    for (size_t i = 0; i < ps->ndefs; i++) {
        const promo_def *d = &ps->defs[i];
        size_t p = 0;
        if (d->product_id != 0) {
            if (d->product_id != ps->products[ps->nproducts - 1]) {
                ps->own[ps->nproducts].lo = i;
                ps->products[ps->nproducts++] = d->product_id;
            }
            p = ps->nproducts - 1;
        } else if (ps->own[0].hi == 0) {
            ps->own[0].lo = i;
        }
        ps->own[p].hi = i + 1;
        if (d->region[0] != '\0' && region_index(ps, d->region) == ps->nregions)
            memcpy(ps->regions[ps->nregions++], d->region, sizeof(d->region));
    }
    for (size_t i = 0; i < ps->ndefs; i++) {
        const char *region = ps->defs[i].region;
        ps->def_region[i] = region[0] == '\0' ? ps->nregions : region_index(ps, region);
    }
}

promoset *promoset_new(const promo_def *defs, size_t n)
{
    promoset *ps = xcalloc(1, sizeof(*ps));
    ps->defs = xcalloc(n + 1, sizeof(promo_def));
    if (n > 0)
        memcpy(ps->defs, defs, n * sizeof(promo_def));
    ps->ndefs = n;
    qsort(ps->defs, n, sizeof(promo_def), def_cmp);
    ps->def_region = xcalloc(n + 1, sizeof(size_t));
    ps->products = xcalloc(n + 1, sizeof(int64_t));
    ps->own = xcalloc(n + 1, sizeof(def_range));
    ps->regions = xcalloc(n + 1, sizeof(*ps->regions));
    index_defs(ps);
    size_t nsets = ps->nproducts * (ps->nregions + 1);
    ps->sets = xcalloc(nsets, sizeof(promo_set));
    ps->span = xcalloc(nsets, sizeof(def_range));
    ps->every = xcalloc(n + 1, sizeof(int64_t));
    ps->mine = xcalloc(n + 1, sizeof(int64_t));
    ps->every_at = xcalloc(ps->nregions + 2, sizeof(size_t));
    ps->mine_at = xcalloc(ps->nregions + 2, sizeof(size_t));
    return ps;
}

void promoset_free(promoset *ps)
{
    if (ps == NULL)
        return;
    free(ps->defs);
    free(ps->def_region);
    free(ps->products);
    free(ps->own);
    free(ps->regions);
    free(ps->sets);
    free(ps->span);
    free(ps->ids);
    free(ps->every);
    free(ps->mine);
    free(ps->every_at);
    free(ps->mine_at);
    free(ps);
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

/* The ids of the defs in r active at now_ms into out, grouped by region
 * (a counting sort: stable, so each group stays ascending, as the range
 * is); group g is out[at[g], at[g + 1]), g = nregions: every region. */
static void bucket(const promoset *ps, def_range r, int64_t now_ms, int64_t *out, size_t *at)
{
    size_t groups = ps->nregions + 1;
    memset(at, 0, (groups + 1) * sizeof(size_t));
    for (size_t i = r.lo; i < r.hi; i++) {
        const promo_def *d = &ps->defs[i];
        if (d->starts_ms <= now_ms && now_ms < d->ends_ms)
            at[ps->def_region[i] + 1]++;
    }
    for (size_t g = 0; g < groups; g++)
        at[g + 1] += at[g];
    for (size_t i = r.lo; i < r.hi; i++) {
        const promo_def *d = &ps->defs[i];
        if (d->starts_ms <= now_ms && now_ms < d->ends_ms)
            out[at[ps->def_region[i]]++] = d->id;
    }
    for (size_t g = groups; g > 0; g--) /* the fill moved each start to the next's */
        at[g] = at[g - 1];
    at[0] = 0;
}

typedef struct ids_run {
    const int64_t *v;
    size_t n;
} ids_run;

/* The ascending merge of three ascending runs (duplicates kept) into out. */
static size_t merge3(int64_t *out, ids_run a, ids_run b, ids_run c)
{
    size_t n = 0;
    while (a.n + b.n + c.n > 0) {
        ids_run *m = a.n ? &a : b.n ? &b : &c;
        if (b.n && b.v[0] < m->v[0])
            m = &b;
        if (c.n && c.v[0] < m->v[0])
            m = &c;
        out[n++] = *m->v++;
        m->n--;
    }
    return n;
}

static ids_run group(const int64_t *ids, const size_t *at, size_t g)
{
    ids_run r = {ids + at[g], at[g + 1] - at[g]};
    return r;
}

/* Room for extra more ids after used (the storage may move: offsets only
 * until the sets settle). */
static void ids_reserve(promoset *ps, size_t used, size_t extra)
{
    if (used + extra + 1 > ps->ids_cap) {
        ps->ids_cap = 2 * (used + extra + 1);
        ps->ids = xrealloc(ps->ids, ps->ids_cap * sizeof(int64_t));
    }
}

static void set_at(promoset *ps, size_t i, size_t off, size_t n)
{
    ps->span[i].lo = off;
    ps->span[i].hi = off + n;
    ps->sets[i].n = n > KEY_MAX_PROMOS ? -1 : (int)n;
    ps->sets[i].hash = ids_hash(ps->ids + off, (int)n);
}

/* Product 0's sets (every product's promotions, by region) at the start
 * of the storage; returns the ids used. */
static size_t sets_every(promoset *ps, int64_t now_ms)
{
    size_t stride = ps->nregions + 1, used = 0;
    bucket(ps, ps->own[0], now_ms, ps->every, ps->every_at);
    ids_run any = group(ps->every, ps->every_at, ps->nregions), none = {NULL, 0};
    for (size_t r = 0; r < stride; r++) {
        ids_run named = r < ps->nregions ? group(ps->every, ps->every_at, r) : none;
        ids_reserve(ps, used, any.n + named.n);
        size_t n = merge3(ps->ids + used, any, named, none);
        set_at(ps, r, used, n);
        used += n;
    }
    return used;
}

/* Products[p]'s sets after used; a region where it has nothing of its own
 * shares product 0's. Returns the ids used. */
static size_t sets_own(promoset *ps, size_t p, int64_t now_ms, size_t used)
{
    size_t stride = ps->nregions + 1;
    bucket(ps, ps->own[p], now_ms, ps->mine, ps->mine_at);
    ids_run any = group(ps->mine, ps->mine_at, ps->nregions), none = {NULL, 0};
    for (size_t r = 0; r < stride; r++) {
        ids_run named = r < ps->nregions ? group(ps->mine, ps->mine_at, r) : none;
        size_t i = p * stride + r;
        def_range es = ps->span[r];
        if (any.n + named.n == 0) {
            ps->sets[i] = ps->sets[r];
            ps->span[i] = es;
            continue;
        }
        ids_reserve(ps, used, es.hi - es.lo + any.n + named.n);
        ids_run e = {ps->ids + es.lo, es.hi - es.lo};
        size_t n = merge3(ps->ids + used, e, any, named);
        set_at(ps, i, used, n);
        used += n;
    }
    return used;
}
/* Computes every set for the interval that contains now_ms. Not inlined:
 * it runs once per boundary or reload, and profiles should name it. */
__attribute__((noinline)) static void sets_compute(promoset *ps, int64_t now_ms)
{
    size_t stride = ps->nregions + 1, nsets = ps->nproducts * stride;
    size_t used = sets_every(ps, now_ms);
    for (size_t p = 1; p < ps->nproducts; p++)
        used = sets_own(ps, p, now_ms, used);
    for (size_t i = 0; i < nsets; i++) /* the storage has settled: point into it */
        ps->sets[i].ids = ps->ids + ps->span[i].lo;
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
