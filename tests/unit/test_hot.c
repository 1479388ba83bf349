/* Unit tests of the in-process tier: hits, stamps, expiry, collisions,
 * size bound, clear. */
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "quotecache/hot.h"

static void test_hit_and_miss(void)
{
    hot *h = hot_new(64, 1024);
    size_t len = 0;
    CHECK(hot_get(h, "a", 1, 0, &len) == NULL);
    hot_put(h, "a", "va\0x", 4, 1, 100);
    const char *v = hot_get(h, "a", 1, 99, &len);
    CHECK(v != NULL && len == 4 && memcmp(v, "va\0x", 4) == 0);
    CHECK(hot_get(h, "b", 1, 0, &len) == NULL);
    CHECK(hot_count(h) == 1);
    hot_free(h);
}

static void test_stamp_and_expiry(void)
{
    hot *h = hot_new(8, 1024);
    size_t len;
    hot_put(h, "k", "v", 1, 7, 1000);
    CHECK(hot_get(h, "k", 8, 10, &len) == NULL);   /* invalidated since */
    CHECK(hot_get(h, "k", 7, 1000, &len) == NULL); /* expired */
    CHECK(hot_get(h, "k", 7, 999, &len) != NULL);
    hot_put(h, "k", "w", 1, 8, 2000); /* replacing the same key */
    const char *v = hot_get(h, "k", 8, 10, &len);
    CHECK(v != NULL && v[0] == 'w' && hot_count(h) == 1);
    hot_free(h);
}

static void test_collisions_replace(void)
{
    hot *h = hot_new(1, 1024); /* one slot: every key collides */
    size_t len;
    hot_put(h, "one", "1", 1, 0, 10);
    hot_put(h, "two", "2", 1, 0, 10);
    CHECK(hot_get(h, "one", 0, 0, &len) == NULL);
    CHECK(hot_get(h, "two", 0, 0, &len) != NULL);
    CHECK(hot_count(h) == 1);
    hot_free(h);
}

static void test_bounds_and_clear(void)
{
    hot *h = hot_new(100, 8); /* rounded up to 128 slots */
    size_t len;
    hot_put(h, "big", "123456789", 9, 0, 10);
    CHECK(hot_get(h, "big", 0, 0, &len) == NULL);
    char key[16];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        hot_put(h, key, "v", 1, 0, 10);
    }
    CHECK(hot_count(h) <= 128 && hot_count(h) > 0);
    hot_clear(h);
    CHECK(hot_count(h) == 0);
    CHECK(hot_get(h, "k999", 0, 0, &len) == NULL);
    hot_free(h);
}

static void test_drop(void)
{
    hot *h = hot_new(1, 1024); /* one slot: "b" lives where "a" did */
    size_t len;
    hot_put(h, "a", "1", 1, 0, 10);
    hot_drop(h, "b"); /* another key's slot content stays */
    CHECK(hot_get(h, "a", 0, 0, &len) != NULL && hot_count(h) == 1);
    hot_drop(h, "a");
    CHECK(hot_get(h, "a", 0, 0, &len) == NULL && hot_count(h) == 0);
    hot_drop(h, "a"); /* dropping nothing is fine */
    CHECK(hot_count(h) == 0);
    hot_free(h);
}

int main(void)
{
    test_hit_and_miss();
    test_stamp_and_expiry();
    test_collisions_replace();
    test_bounds_and_clear();
    test_drop();
    return CHECK_DONE();
}
