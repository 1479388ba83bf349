/* Unit tests of the promotion sets: which promotions apply to (product,
 * region), across start and end boundaries, a clock that goes back, the
 * set for every product, and the bound on ids per key; the indexed
 * recompute against the scan it replaced (the oracle) on random inputs.
 * `unit_promoset --bench` prints the cost of a recompute at 100, 1,000 and
 * 3,000 promotions instead. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/* ---- the oracle: the scan over every definition that the index replaced ---- */

static uint64_t oracle_hash(const int64_t *ids, int n)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n;
    for (int i = 0; i < n; i++) {
        h ^= (uint64_t)ids[i];
        h *= 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    return h;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static int oracle(const promo_def *d, size_t n, int64_t product, const char *region, int64_t now,
                  int64_t *out)
{
    int k = 0;
    for (size_t i = 0; i < n; i++) {
        if ((d[i].product_id == 0 || d[i].product_id == product) &&
            (d[i].region[0] == '\0' || strcmp(d[i].region, region) == 0) && d[i].starts_ms <= now &&
            now < d[i].ends_ms)
            out[k++] = d[i].id;
    }
    qsort(out, (size_t)k, sizeof(int64_t), cmp_i64);
    return k;
}

static uint64_t rng_state;

static uint64_t rnd(uint64_t bound)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state % bound;
}

static const char *const regions[] = {"", "US", "EU", "APAC", "LATAM"};

/* n random definitions over about products products: a third for every
 * product, some ids repeated (a promotion on several products). */
static void random_defs(promo_def *d, size_t n, int64_t products)
{
    for (size_t i = 0; i < n; i++) {
        int64_t from = (int64_t)rnd(10000);
        d[i] = def(rnd(3) == 0 ? 0 : 1 + (int64_t)rnd((uint64_t)products),
                   rnd(8) == 0 && i > 0 ? d[rnd(i)].id : 1 + (int64_t)rnd(1000000), regions[rnd(5)],
                   from, from + 1 + (int64_t)rnd(5000));
    }
}

static void test_matches_oracle(void)
{
    static promo_def d[300];
    static int64_t want[300];
    int bad = 0;
    for (uint64_t seed = 1; seed <= 40; seed++) {
        rng_state = seed * 0x9e3779b97f4a7c15ULL;
        size_t n = (size_t)rnd(300);
        int64_t products = 1 + (int64_t)rnd(60);
        random_defs(d, n, products);
        promoset *ps = promoset_new(d, n);
        for (int t = 0; t < 30; t++) {
            /* random times, and the very bounds of random definitions */
            int64_t now = n > 0 && t % 2 ? (t % 4 == 1 ? d[rnd(n)].starts_ms : d[rnd(n)].ends_ms)
                                         : (int64_t)rnd(16000) - 500;
            for (int64_t p = 0; p <= products + 2; p++) {
                for (size_t r = 0; r < 6; r++) {
                    const char *region = r < 5 ? regions[r] : "XX";
                    if (region[0] == '\0')
                        continue;
                    int k = oracle(d, n, p, region, now, want);
                    const promo_set *s = promoset_get(ps, p, region, now);
                    bool ok = s->n == k &&
                              (k == 0 || memcmp(s->ids, want, (size_t)k * sizeof(int64_t)) == 0) &&
                              s->hash == oracle_hash(want, k);
                    bad += !ok;
                }
            }
        }
        promoset_free(ps);
    }
    CHECK(bad == 0);
}

/* ---- --bench ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ms per recompute: n definitions, products ~ 2n/3 (most with one or two
 * of their own), each call at a time in another interval. */
static void bench(size_t n)
{
    promo_def *d = calloc(n, sizeof(promo_def));
    rng_state = 42;
    random_defs(d, n, (int64_t)(n * 2 / 3));
    promoset *ps = promoset_new(d, n);
    int rounds = 0;
    double t0 = now_s();
    for (int64_t t = 0; now_s() - t0 < 1.0 || rounds < 3; t += 3001, rounds++)
        promoset_get(ps, 1, "US", t % 15000);
    double per = (now_s() - t0) * 1e3 / rounds;
    printf("promoset recompute: %zu promotions: %.3f ms (%d rounds)\n", n, per, rounds);
    promoset_free(ps);
    free(d);
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--bench") == 0) {
        bench(100);
        bench(1000);
        bench(3000);
        return 0;
    }
    test_boundaries();
    test_hash();
    test_too_many();
    test_empty();
    test_matches_oracle();
    return CHECK_DONE();
}
