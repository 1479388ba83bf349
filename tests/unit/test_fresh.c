/* Unit tests of the freshness rules: current, stale within the horizon and
 * never superseded, negative entries, read your own write. */
#include "check.h"
#include "quotecache/fresh.h"

static const fresh_policy P = {.ttl_ms = 10000, .neg_ttl_ms = 2000, .stale_ms = 5000};

static envelope entry(int status, int64_t stored_at, uint64_t gg, uint64_t gp)
{
    envelope e = {0};
    e.status = status;
    e.stored_at_ms = stored_at;
    e.load_ms = 40;
    e.gen_global = gg;
    e.gen_product = gp;
    return e;
}

static void test_current(void)
{
    envelope e = entry(200, 1000, 3, 7);
    fresh_gens g = {3, 7};
    CHECK(fresh_is_current(&P, &e, g, 1000));
    CHECK(fresh_is_current(&P, &e, g, 10999));
    CHECK(!fresh_is_current(&P, &e, g, 11000)); /* TTL over */
    fresh_gens moved_global = {4, 7}, moved_product = {3, 8};
    CHECK(!fresh_is_current(&P, &e, moved_global, 2000));
    CHECK(!fresh_is_current(&P, &e, moved_product, 2000));
    envelope n = entry(404, 1000, 3, 7);
    CHECK(fresh_is_current(&P, &n, g, 2999));
    CHECK(!fresh_is_current(&P, &n, g, 3000)); /* --neg-ttl, not --ttl */
    CHECK(fresh_until_ms(&P, &e) == 11000 && fresh_until_ms(&P, &n) == 3000);
}

static void test_stale_bounded(void)
{
    envelope e = entry(200, 1000, 3, 7);
    fresh_gens g = {3, 7};
    CHECK(fresh_horizon_ms(&P, &e) == 16000);
    CHECK(fresh_may_serve_stale(&P, &e, g, 5, 5, 12000));
    CHECK(fresh_may_serve_stale(&P, &e, g, 5, 5, 15999));
    CHECK(!fresh_may_serve_stale(&P, &e, g, 5, 5, 16000)); /* past ttl + stale-ttl */
    CHECK(!fresh_may_serve_stale(&P, &e, g, 5, 5, 60000));
}

static void test_stale_never_superseded(void)
{
    envelope e = entry(200, 1000, 3, 7);
    fresh_gens g = {3, 7}, bumped = {3, 8}, purged = {4, 7};
    CHECK(!fresh_may_serve_stale(&P, &e, bumped, 5, 5, 12000)); /* a write, seen in Redis */
    CHECK(!fresh_may_serve_stale(&P, &e, purged, 5, 5, 12000)); /* a purge */
    CHECK(!fresh_may_serve_stale(&P, &e, g, 5, 6, 12000));      /* a write seen here only */
    envelope n = entry(404, 1000, 3, 7);
    CHECK(!fresh_may_serve_stale(&P, &n, g, 5, 5, 3500)); /* 404s are never stale */
}

static void test_read_your_write(void)
{
    CHECK(!fresh_needs_later_load(0, 500));   /* not a no-cache request */
    CHECK(!fresh_needs_later_load(400, 500)); /* arrived before the load began */
    CHECK(fresh_needs_later_load(500, 500));  /* the same tick: cannot tell, so wait */
    CHECK(fresh_needs_later_load(501, 500));  /* the load may predate the write */
    CHECK(!fresh_needs_later_load(501, 0));   /* no load ran: nothing to wait for */
    envelope e = entry(200, 1000, 0, 0);
    CHECK(fresh_load_began_ms(&e) == 960);
}

/* The change feed down: nothing is fresh past trust_ms of age, the STALE
 * horizon is unchanged, and a stale copy waits for its refresh. */
static void test_trust_cap(void)
{
    fresh_policy t = P;
    t.trust_ms = 1000;
    envelope e = entry(200, 1000, 3, 7), n = entry(404, 1000, 3, 7);
    fresh_gens g = {3, 7};
    CHECK(fresh_is_current(&t, &e, g, 1999));
    CHECK(!fresh_is_current(&t, &e, g, 2000)); /* 1 s, not --ttl's 10 */
    CHECK(fresh_until_ms(&t, &n) == 2000);
    CHECK(fresh_horizon_ms(&t, &e) == 16000); /* still ttl + stale-ttl */
    CHECK(fresh_may_serve_stale(&t, &e, g, 5, 5, 15999));
    CHECK(!fresh_stale_while_revalidate(&t) && fresh_stale_while_revalidate(&P));
    t.trust_ms = 60000; /* a cap longer than the TTL changes nothing */
    CHECK(fresh_until_ms(&t, &e) == 11000);
}

int main(void)
{
    test_current();
    test_stale_bounded();
    test_stale_never_superseded();
    test_read_your_write();
    test_trust_cap();
    return CHECK_DONE();
}
