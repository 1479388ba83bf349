/* Unit tests for flight: start/find/join/leave/take, bounds, reuse of a key
 * after take, growth to many keys, and freeing a table that still holds
 * flights (leak-checked under ASan). */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "quotecache/flight.h"

static void test_basic(void)
{
    flight_table *t = flight_table_new(0, 0);
    flight_waiter a = {0}, b = {0}, c = {0};
    flight *f;
    size_t n = 99;
    int owner;

    CHECK(flight_find(t, "k") == NULL);
    f = flight_start(t, "k");
    CHECK(f != NULL);
    CHECK(flight_find(t, "k") == f);
    CHECK(flight_find(t, "k2") == NULL);
    CHECK(strcmp(flight_key(f), "k") == 0);
    CHECK(flight_owner(f) == NULL);
    flight_set_owner(f, &owner);
    CHECK(flight_owner(f) == &owner);
    CHECK(flight_table_flights(t) == 1);

    CHECK(flight_join(t, f, &a) == 0);
    CHECK(flight_join(t, f, &b) == 0);
    CHECK(flight_join(t, f, &c) == 0);
    CHECK(a.flight == f && b.flight == f && c.flight == f);
    CHECK(flight_join(t, f, &a) == -1); /* already waiting */
    CHECK(flight_waiters(f) == 3 && flight_table_waiters(t) == 3);

    /* Leave from the middle, then the ends. */
    flight_leave(t, &b);
    CHECK(b.flight == NULL && b.next == NULL && b.prev == NULL);
    CHECK(flight_waiters(f) == 2 && flight_table_waiters(t) == 2);
    flight_leave(t, &b); /* not waiting: no-op */
    CHECK(flight_waiters(f) == 2);
    CHECK(a.next == &c && c.prev == &a);

    flight_waiter *list = flight_take(t, f, &n);
    CHECK(n == 2);
    CHECK(list == &a && a.next == &c && c.next == NULL);
    CHECK(a.flight == NULL && c.flight == NULL);
    CHECK(flight_find(t, "k") == NULL);
    CHECK(flight_table_flights(t) == 0 && flight_table_waiters(t) == 0);
    CHECK(flight_waiters(f) == 0);
    CHECK(strcmp(flight_key(f), "k") == 0); /* still readable until freed */

    /* Leave after take is a no-op and keeps the returned list intact. */
    flight_leave(t, &a);
    CHECK(a.next == &c && flight_table_waiters(t) == 0);

    /* A new flight for the same key while the old one is being finished. */
    flight *g = flight_start(t, "k");
    CHECK(g != f && flight_find(t, "k") == g);
    b = (flight_waiter){0};
    CHECK(flight_join(t, g, &b) == 0);
    CHECK(flight_table_waiters(t) == 1);
    flight_free(f);

    list = flight_take(t, g, &n);
    CHECK(n == 1 && list == &b && b.next == NULL && b.flight == NULL);
    flight_free(g);
    flight_table_free(t);
}

static void test_take_empty(void)
{
    flight_table *t = flight_table_new(0, 0);
    flight *f = flight_start(t, "empty");
    size_t n = 99;

    CHECK(flight_take(t, f, &n) == NULL && n == 0);
    CHECK(flight_table_flights(t) == 0);
    flight_free(f);
    flight_table_free(t);
}

static void test_bounds(void)
{
    flight_table *t = flight_table_new(2, 3);
    flight_waiter w[5];
    flight *f = flight_start(t, "a");
    flight *g = flight_start(t, "b");
    size_t n;

    memset(w, 0, sizeof(w));
    CHECK(flight_join(t, f, &w[0]) == 0);
    CHECK(flight_join(t, f, &w[1]) == 0);
    CHECK(flight_join(t, f, &w[2]) == -1); /* per key */
    CHECK(w[2].flight == NULL && w[2].next == NULL);
    CHECK(flight_join(t, g, &w[2]) == 0);
    CHECK(flight_join(t, g, &w[3]) == -1); /* total */
    CHECK(flight_table_waiters(t) == 3);

    flight_leave(t, &w[0]); /* frees room on both bounds */
    CHECK(flight_join(t, f, &w[3]) == 0);
    CHECK(flight_join(t, g, &w[4]) == -1);
    CHECK(flight_waiters(f) == 2 && flight_waiters(g) == 1);

    /* Taking a flight gives its waiters' share of the total back. */
    flight_waiter *list = flight_take(t, f, &n);
    CHECK(n == 2 && list == &w[1] && w[1].next == &w[3]);
    CHECK(flight_table_waiters(t) == 1);
    CHECK(flight_join(t, g, &w[4]) == 0);
    /* A taken flight accepts no more waiters. */
    w[0] = (flight_waiter){0};
    CHECK(flight_join(t, f, &w[0]) == -1);
    flight_free(f);
    flight_table_free(t);
    CHECK(w[2].flight == NULL && w[4].flight == NULL);
}

static void test_many_keys(void)
{
    enum { N = 10000 };
    flight_table *t = flight_table_new(0, 0);
    flight **fs = calloc(N, sizeof(*fs));
    flight_waiter *ws = calloc(N, sizeof(*ws));
    char key[32];
    int found = 0, joined = 0;

    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "qc:v1:{%d}:k", i);
        fs[i] = flight_start(t, key);
        joined += flight_join(t, fs[i], &ws[i]) == 0;
    }
    CHECK(joined == N);
    CHECK(flight_table_flights(t) == N && flight_table_waiters(t) == N);
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "qc:v1:{%d}:k", i);
        found += flight_find(t, key) == fs[i];
    }
    CHECK(found == N);
    CHECK(flight_find(t, "qc:v1:{10000}:k") == NULL);

    /* Take every other one, then check the rest are intact. */
    for (int i = 0; i < N; i += 2) {
        size_t n;
        flight_take(t, fs[i], &n);
        flight_free(fs[i]);
    }
    CHECK(flight_table_flights(t) == N / 2 && flight_table_waiters(t) == N / 2);
    found = 0;
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "qc:v1:{%d}:k", i);
        found += flight_find(t, key) == (i % 2 ? fs[i] : NULL);
    }
    CHECK(found == N);
    flight_table_free(t);
    CHECK(ws[1].flight == NULL && ws[N - 1].flight == NULL);
    free(fs);
    free(ws);
}

static void test_free_with_flights(void)
{
    flight_table *t = flight_table_new(0, 0);
    flight_waiter a = {0}, b = {0};
    flight *f = flight_start(t, "x");

    flight_start(t, "y");
    CHECK(flight_join(t, f, &a) == 0 && flight_join(t, f, &b) == 0);
    flight_table_free(t);
    CHECK(a.flight == NULL && a.next == NULL && b.flight == NULL && b.prev == NULL);
    flight_table_free(NULL);
}

static void test_free_without_take(void)
{
    flight_table *t = flight_table_new(0, 0);
    flight_waiter a = {0};
    flight *f = flight_start(t, "x");

    CHECK(flight_join(t, f, &a) == 0);
    flight_free(f); /* misuse, but must leave the table consistent */
    CHECK(flight_find(t, "x") == NULL && a.flight == NULL);
    CHECK(flight_table_flights(t) == 0 && flight_table_waiters(t) == 0);
    flight_table_free(t);
}

int main(void)
{
    test_basic();
    test_take_empty();
    test_bounds();
    test_many_keys();
    test_free_with_flights();
    test_free_without_take();
    return CHECK_DONE();
}
