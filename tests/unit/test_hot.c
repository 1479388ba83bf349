/* Unit tests of the in-process tier: hits keyed by the normalized request,
 * stamps, expiry, hash collisions told apart by the request, two ways per
 * set, drop by entry key, same-bytes refresh, the ready-to-send parts,
 * references that outlive a replacement, size bound, clear. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quotecache/hot.h"

static quote_req req(int64_t pid, const char *tier)
{
    quote_req r;
    memset(&r, 0, sizeof(r));
    r.product_id = pid;
    snprintf(r.region, sizeof(r.region), "US");
    snprintf(r.tier, sizeof(r.tier), "%s", tier);
    snprintf(r.currency, sizeof(r.currency), "USD");
    return r;
}

/* An envelope (status 200) around body; caller frees. */
static char *env(const char *body, size_t *len)
{
    envelope e;
    memset(&e, 0, sizeof(e));
    e.status = 200;
    e.stored_at_ms = 5;
    e.product_id = 1;
    envelope_etag(body, strlen(body), e.etag);
    return envelope_encode(&e, body, strlen(body), len);
}

static void put(hot *h, const hot_req *k, const char *ekey, const char *body, uint64_t stamp,
                int64_t until)
{
    size_t len;
    char *v = env(body, &len);
    hot_put(h, k, ekey, v, len, stamp, until);
    free(v);
}

static int body_is(const hot_entry *e, const char *body)
{
    return e != NULL && e->body_len == strlen(body) && memcmp(e->body, body, e->body_len) == 0;
}

static void test_hit_parts_stamp_expiry(void)
{
    hot *h = hot_new(64, 1024);
    quote_req r = req(1, "gold");
    hot_req k = {&r, NULL, 0, 0};
    CHECK(hot_get(h, &k, 1, 0) == NULL);
    put(h, &k, "qc:1:{1}:aa", "{\"x\":1}", 7, 1000);
    const hot_entry *e = hot_get(h, &k, 7, 999);
    CHECK(body_is(e, "{\"x\":1}"));
    CHECK(e && e->env.status == 200 && e->env.stored_at_ms == 5);
    CHECK(e && e->body_len == 7);
    CHECK(e && e->etag_quoted[0] == '"' && strlen(e->etag_quoted) == ENVELOPE_ETAG_LEN + 2 &&
          strncmp(e->etag_quoted + 1, e->env.etag, ENVELOPE_ETAG_LEN) == 0);
    CHECK(hot_get(h, &k, 8, 10) == NULL);   /* invalidated since */
    CHECK(hot_get(h, &k, 7, 1000) == NULL); /* expired */
    quote_req other = req(1, "silver");
    hot_req k2 = {&other, NULL, 0, 0};
    CHECK(hot_get(h, &k2, 7, 10) == NULL);
    CHECK(hot_count(h) == 1);
    hot_free(h);
}

static void test_promotion_set_is_part_of_key(void)
{
    hot *h = hot_new(64, 1024);
    quote_req r = req(2, "gold");
    int64_t a[] = {3, 9}, b[] = {3, 8};
    hot_req none = {&r, NULL, 0, 0}, ka = {&r, a, 2, 77}, kb = {&r, b, 2, 77};
    put(h, &ka, "qc:1:{2}:a", "A", 0, 100);
    CHECK(body_is(hot_get(h, &ka, 0, 0), "A"));
    CHECK(hot_get(h, &none, 0, 0) == NULL);
    CHECK(hot_get(h, &kb, 0, 0) == NULL); /* same hash given, other ids: compared */
    hot_free(h);
}

/* Two requests in one set (2 slots: a single set) both stay; a third
 * evicts the one used least recently. */
static void test_two_ways(void)
{
    hot *h = hot_new(2, 1024);
    quote_req r1 = req(1, "a"), r2 = req(2, "b"), r3 = req(3, "c");
    hot_req k1 = {&r1, NULL, 0, 0}, k2 = {&r2, NULL, 0, 0}, k3 = {&r3, NULL, 0, 0};
    put(h, &k1, "e1", "one", 0, 100);
    put(h, &k2, "e2", "two", 0, 100);
    CHECK(body_is(hot_get(h, &k1, 0, 0), "one"));
    CHECK(body_is(hot_get(h, &k2, 0, 0), "two"));
    CHECK(body_is(hot_get(h, &k1, 0, 0), "one")); /* k2 is now the least recent */
    put(h, &k3, "e3", "three", 0, 100);
    CHECK(body_is(hot_get(h, &k1, 0, 0), "one"));
    CHECK(hot_get(h, &k2, 0, 0) == NULL);
    CHECK(body_is(hot_get(h, &k3, 0, 0), "three"));
    CHECK(hot_count(h) == 2);
    hot_drop(h, "e2"); /* gone already: nothing else goes */
    CHECK(hot_count(h) == 2);
    hot_drop(h, "e3");
    CHECK(hot_get(h, &k3, 0, 0) == NULL && hot_count(h) == 1);
    hot_free(h);
}

static void test_hash_spreads(void)
{
    quote_req a = req(1, "gold"), b = req(2, "gold"), c = req(1, "silver");
    hot_req ka = {&a, NULL, 0, 0}, kb = {&b, NULL, 0, 0}, kc = {&c, NULL, 0, 0};
    hot_req kp = {&a, NULL, 0, 5};
    uint64_t ha = hot_hash(&ka);
    CHECK(ha == hot_hash(&ka));
    CHECK(ha != hot_hash(&kb) && ha != hot_hash(&kc) && ha != hot_hash(&kp));
    /* Many keys in a table their number's size: most are kept. */
    hot *h = hot_new(1024, 1024);
    static quote_req rs[1024];
    size_t kept = 0;
    for (int i = 0; i < 1024; i++) {
        rs[i] = req(i + 1, i % 2 ? "gold" : "silver");
        hot_req k = {&rs[i], NULL, 0, 0};
        char ek[32];
        snprintf(ek, sizeof(ek), "e%d", i);
        put(h, &k, ek, "v", 0, 100);
    }
    for (int i = 0; i < 1024; i++) {
        hot_req k = {&rs[i], NULL, 0, 0};
        kept += hot_get(h, &k, 0, 0) != NULL;
    }
    CHECK(kept == hot_count(h) && kept > 700);
    hot_free(h);
}

static void test_same_bytes_and_references(void)
{
    hot *h = hot_new(8, 1024);
    quote_req r = req(1, "gold");
    hot_req k = {&r, NULL, 0, 0};
    put(h, &k, "e", "same", 1, 100);
    const hot_entry *e = hot_get(h, &k, 1, 0);
    const char *body = e->body;
    put(h, &k, "e", "same", 2, 200); /* read again: only stamp and expiry move */
    e = hot_get(h, &k, 2, 150);
    CHECK(e != NULL && e->body == body);
    hot_value *ref = hot_value_ref(e);
    put(h, &k, "e", "other", 2, 200);    /* replaced: the reference keeps the old bytes */
    CHECK(memcmp(body, "same", 4) == 0); /* (ASan: no use after free) */
    CHECK(body_is(hot_get(h, &k, 2, 0), "other"));
    hot_value_unref(ref);
    CHECK(hot_count(h) == 1);
    hot_free(h);
}

static void test_bounds_and_clear(void)
{
    hot *h = hot_new(128, 64);
    quote_req r = req(1, "gold");
    hot_req k = {&r, NULL, 0, 0};
    static char big[200];
    memset(big, 'x', sizeof(big) - 1);
    put(h, &k, "e", big, 0, 100);
    CHECK(hot_get(h, &k, 0, 0) == NULL);
    hot_put(h, &k, "e", "not an envelope", 15, 0, 100);
    CHECK(hot_get(h, &k, 0, 0) == NULL && hot_count(h) == 0);
    put(h, &k, "e", "v", 0, 100);
    CHECK(hot_count(h) == 1);
    hot_clear(h);
    CHECK(hot_count(h) == 0 && hot_get(h, &k, 0, 0) == NULL);
    hot_drop(h, "e");
    hot_free(h);
}

int main(void)
{
    test_hit_parts_stamp_expiry();
    test_promotion_set_is_part_of_key();
    test_two_ways();
    test_hash_spreads();
    test_same_bytes_and_references();
    test_bounds_and_clear();
    return CHECK_DONE();
}
