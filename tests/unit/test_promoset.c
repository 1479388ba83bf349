/* Unit tests of the promotion sets: which promotions apply to (product,
 * region), across start and end boundaries, a clock that goes back, the
 * set for every product, and the bound on ids per key. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "quotecache/promoset.h"

static promo_def def(int64_t product, int64_t id, const char *region, int64_t from, int64_t to)
{
    promo_def d;
    memset(&d, 0, sizeof(d));
    d.product_id = product;
    d.id = id;
    snprintf(d.region, sizeof(d.region), "%s", region);
    d.starts_ms = from;
    d.ends_ms = to;
    return d;
}

static int same(const promo_set *s, const int64_t *want, int n)
{
    return s->n == n && (n == 0 || memcmp(s->ids, want, (size_t)n * sizeof(int64_t)) == 0);
}

static void test_boundaries(void)
{
    promo_def d[] = {
        def(7, 30, "", 1000, 2000),   /* product 7, every region */
        def(0, 10, "US", 1500, 3000), /* every product, US */
        def(7, 20, "EU", 0, 1800),    /* product 7, EU */
    };
    promoset *ps = promoset_new(d, 3);
    CHECK(same(promoset_get(ps, 7, "US", 999), NULL, 0));
    const int64_t a[] = {30};
    CHECK(same(promoset_get(ps, 7, "US", 1000), a, 1)); /* starts at its very ms */
    const int64_t b[] = {10, 30};
    CHECK(same(promoset_get(ps, 7, "US", 1500), b, 2)); /* ascending */
    CHECK(same(promoset_get(ps, 7, "US", 1999), b, 2));
    const int64_t c[] = {10};
    CHECK(same(promoset_get(ps, 7, "US", 2000), c, 1)); /* ends at its very ms */
    CHECK(same(promoset_get(ps, 8, "US", 2000), c, 1)); /* a product with none of its own */
    CHECK(same(promoset_get(ps, 8, "EU", 2000), NULL, 0));
    const int64_t e[] = {20, 30};
    CHECK(same(promoset_get(ps, 7, "EU", 1700), e, 2)); /* the clock went back */
    CHECK(same(promoset_get(ps, 7, "XX", 1700), a, 1)); /* a region no promotion names */
    CHECK(same(promoset_get(ps, 7, "US", 3000), NULL, 0));
    promoset_free(ps);
}

static void test_hash(void)
{
    promo_def d[] = {def(1, 5, "", 0, 100), def(2, 5, "", 0, 100), def(3, 6, "", 0, 100)};
    promoset *ps = promoset_new(d, 3);
    uint64_t h1 = promoset_get(ps, 1, "US", 10)->hash;
    uint64_t h2 = promoset_get(ps, 2, "US", 10)->hash;
    uint64_t h3 = promoset_get(ps, 3, "US", 10)->hash;
    uint64_t h0 = promoset_get(ps, 4, "US", 10)->hash;
    CHECK(h1 == h2); /* equal sets, equal hashes */
    CHECK(h1 != h3 && h1 != h0 && h3 != h0);
    promoset_free(ps);
}

static void test_too_many(void)
{
    static promo_def d[KEY_MAX_PROMOS + 1];
    for (int i = 0; i <= KEY_MAX_PROMOS; i++)
        d[i] = def(0, KEY_MAX_PROMOS + 1 - i, "", i < KEY_MAX_PROMOS ? 0 : 50, 100);
    promoset *ps = promoset_new(d, KEY_MAX_PROMOS + 1);
    const promo_set *s = promoset_get(ps, 9, "US", 10);
    CHECK(s->n == KEY_MAX_PROMOS && s->ids[0] == 2 &&
          s->ids[KEY_MAX_PROMOS - 1] == KEY_MAX_PROMOS + 1);
    CHECK(promoset_get(ps, 9, "US", 50)->n == -1);
    CHECK(promoset_get(ps, 9, "US", 100)->n == 0);
    promoset_free(ps);
}

static void test_empty(void)
{
    promoset *ps = promoset_new(NULL, 0);
    CHECK(same(promoset_get(ps, 1, "US", 0), NULL, 0));
    promoset_free(ps);
}

int main(void)
{
    test_boundaries();
    test_hash();
    test_too_many();
    test_empty();
    return CHECK_DONE();
}
