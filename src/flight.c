/* flight: owns the in-process waiter table, one flight per cache key being
 * loaded, each with an intrusive doubly-linked list of waiters. Pure
 * bookkeeping: no I/O, no timers, no callbacks.
 *
 * The table is open hashing (FNV-1a, power-of-two bucket array, chains)
 * that doubles when flights outnumber buckets, so lookups stay O(1) however
 * many keys are loading. A flight holds a pointer to its table while it is
 * in it; flight_take clears it, which is how flight_free knows a flight has
 * been taken out properly. */
#include "quotecache/flight.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/hash.h"
#include "quotecache/mem.h"

#define INITIAL_BUCKETS 16

struct flight {
    flight *chain;       /* next flight in the same bucket */
    flight_table *table; /* NULL once taken out */
    uint64_t hash;
    char *key;
    flight_waiter *head; /* oldest waiter first: woken in arrival order */
    flight_waiter *tail;
    size_t nwaiters;
    void *owner;
};

struct flight_table {
    flight **buckets;
    size_t nbuckets; /* a power of two */
    size_t nflights;
    size_t nwaiters;
    size_t max_per_key;
    size_t max_total;
};

static flight **bucket_of(const flight_table *t, uint64_t hash)
{
    return &t->buckets[hash & (t->nbuckets - 1)];
}

flight_table *flight_table_new(size_t max_per_key, size_t max_total)
{
    flight_table *t = xcalloc(1, sizeof(*t));

    t->nbuckets = INITIAL_BUCKETS;
    t->buckets = xcalloc(t->nbuckets, sizeof(*t->buckets));
    t->max_per_key = max_per_key;
    t->max_total = max_total;
    return t;
}

/* Forgets every waiter of f without touching the waiting contexts beyond
 * their links: they belong to someone else. */
static void detach_waiters(flight *f)
{
    flight_waiter *w = f->head;

    while (w) {
        flight_waiter *next = w->next;
        w->next = w->prev = NULL;
        w->flight = NULL;
        w = next;
    }
    f->head = f->tail = NULL;
    f->nwaiters = 0;
}

static void destroy(flight *f)
{
    free(f->key);
    free(f);
}

void flight_table_free(flight_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nbuckets; i++) {
        flight *f = t->buckets[i];
        while (f) {
            flight *next = f->chain;
            detach_waiters(f);
            destroy(f);
            f = next;
        }
    }
    free(t->buckets);
    free(t);
}

flight *flight_find(flight_table *t, const char *key)
{
    uint64_t h = hash_str(key);

    for (flight *f = *bucket_of(t, h); f; f = f->chain) {
        if (f->hash == h && strcmp(f->key, key) == 0)
            return f;
    }
    return NULL;
}

/* Doubles the bucket array and rehashes every chain into it. */
static void grow(flight_table *t)
{
    size_t old_n = t->nbuckets;
    flight **old = t->buckets;

    t->nbuckets = old_n * 2;
    t->buckets = xcalloc(t->nbuckets, sizeof(*t->buckets));
    for (size_t i = 0; i < old_n; i++) {
        flight *f = old[i];
        while (f) {
            flight *next = f->chain;
            flight **b = bucket_of(t, f->hash);
            f->chain = *b;
            *b = f;
            f = next;
        }
    }
    free(old);
}

flight *flight_start(flight_table *t, const char *key)
{
    flight *f;
    flight **b;

    assert(flight_find(t, key) == NULL);
    if (t->nflights >= t->nbuckets)
        grow(t);
    f = xcalloc(1, sizeof(*f));
    f->table = t;
    f->hash = hash_str(key);
    f->key = xstrdup(key);
    b = bucket_of(t, f->hash);
    f->chain = *b;
    *b = f;
    t->nflights++;
    return f;
}

int flight_join(flight_table *t, flight *f, flight_waiter *w)
{
    if (w->flight || f->table != t)
        return -1;
    if (t->max_per_key && f->nwaiters >= t->max_per_key)
        return -1;
    if (t->max_total && t->nwaiters >= t->max_total)
        return -1;
    w->flight = f;
    w->next = NULL;
    w->prev = f->tail;
    if (f->tail)
        f->tail->next = w;
    else
        f->head = w;
    f->tail = w;
    f->nwaiters++;
    t->nwaiters++;
    return 0;
}

void flight_leave(flight_table *t, flight_waiter *w)
{
    flight *f = w->flight;

    if (!f)
        return;
    if (w->prev)
        w->prev->next = w->next;
    else
        f->head = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        f->tail = w->prev;
    w->next = w->prev = NULL;
    w->flight = NULL;
    f->nwaiters--;
    /* A waiting waiter's flight is always in a table (take and free clear
     * w->flight first), and that table is the one to debit. */
    (void)t;
    f->table->nwaiters--;
}

static void unlink_from_table(flight_table *t, flight *f)
{
    flight **pp = bucket_of(t, f->hash);

    while (*pp && *pp != f)
        pp = &(*pp)->chain;
    if (*pp)
        *pp = f->chain;
    f->chain = NULL;
    f->table = NULL;
    t->nflights--;
}

flight_waiter *flight_take(flight_table *t, flight *f, size_t *n)
{
    flight_waiter *list = f->head;

    if (n)
        *n = f->nwaiters;
    if (f->table != t) {
        if (n)
            *n = 0;
        return NULL;
    }
    unlink_from_table(t, f);
    t->nwaiters -= f->nwaiters;
    for (flight_waiter *w = list; w; w = w->next) {
        w->flight = NULL;
        w->prev = NULL;
    }
    f->head = f->tail = NULL;
    f->nwaiters = 0;
    return list;
}

void flight_free(flight *f)
{
    if (!f)
        return;
    /* Freeing a flight still in its table would leave the table and the
     * waiters pointing at freed memory: take it out first. Its waiters are
     * detached, not woken; that is the caller's bug, but not a crash. */
    if (f->table) {
        flight_table *t = f->table;
        t->nwaiters -= f->nwaiters;
        detach_waiters(f);
        unlink_from_table(t, f);
    }
    destroy(f);
}

const char *flight_key(const flight *f)
{
    return f->key;
}

size_t flight_waiters(const flight *f)
{
    return f->nwaiters;
}

void *flight_owner(const flight *f)
{
    return f->owner;
}

void flight_set_owner(flight *f, void *owner)
{
    f->owner = owner;
}

size_t flight_table_flights(const flight_table *t)
{
    return t->nflights;
}

size_t flight_table_waiters(const flight_table *t)
{
    return t->nwaiters;
}
