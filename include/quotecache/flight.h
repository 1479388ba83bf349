/* flight: the in-process waiter table. Pure bookkeeping, no I/O, no timers.
 *
 * One flight per cache key being loaded. The first miss starts the flight;
 * later misses join it as waiters. A flight belongs to the table (and to
 * whoever the table's user made its owner), never to the first client: a
 * waiter that leaves only unlinks itself. To finish, the owner takes the
 * whole waiter list out of the table first (flight_take), so that callbacks
 * run while waking can start a fresh flight for the same key safely. */
#ifndef QUOTECACHE_FLIGHT_H
#define QUOTECACHE_FLIGHT_H

#include <stddef.h>

typedef struct flight_table flight_table;
typedef struct flight flight;

/* Embed one in each waiting context. Zero-initialize it. */
typedef struct flight_waiter {
    struct flight_waiter *next;
    struct flight_waiter *prev;
    flight *flight; /* the flight it waits on, NULL when not waiting */
} flight_waiter;

/* Bounds: waiters on one key and waiters in total (0 = unbounded). */
flight_table *flight_table_new(size_t max_per_key, size_t max_total);
/* Frees the table. Flights still in it are freed; their waiters are
 * unlinked (their flight pointer set to NULL) but not otherwise touched. */
void flight_table_free(flight_table *t);

flight *flight_find(flight_table *t, const char *key);
/* Starts a flight for key, which must not be in the table. Never NULL. */
flight *flight_start(flight_table *t, const char *key);
/* Adds w (not waiting) to f. Returns 0, or -1 when a bound is hit (w is then
 * left untouched). */
int flight_join(flight_table *t, flight *f, flight_waiter *w);
/* Unlinks w from its flight. A no-op when w is not waiting. */
void flight_leave(flight_table *t, flight_waiter *w);
/* Removes f from the table (a later flight_find(key) misses) and returns its
 * waiters as a NULL-terminated list linked by ->next, each with ->flight
 * already NULL; *n gets their number. The caller frees f with flight_free. */
flight_waiter *flight_take(flight_table *t, flight *f, size_t *n);
void flight_free(flight *f);

const char *flight_key(const flight *f);
size_t flight_waiters(const flight *f);
void *flight_owner(const flight *f);
void flight_set_owner(flight *f, void *owner);

size_t flight_table_flights(const flight_table *t);
size_t flight_table_waiters(const flight_table *t);

#endif
