/* genmirror: a worker's copy of counters it reads whole and often (in
 * cluster mode, the dimension counters: the global generation, currency,
 * tier and region promotions; rcache.c). Pure code.
 *
 * Monotonic: a value never goes down here. A read that shows a counter
 * lower than the copy, or without a counter the copy holds, is a
 * regression (Redis lost increments: a failover promoted a replica that
 * had not received them, or a restart without persistence): the copy keeps
 * the higher value and the caller is told, so it can repair Redis. */
#ifndef QUOTECACHE_GENMIRROR_H
#define QUOTECACHE_GENMIRROR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct genmirror genmirror;

genmirror *genmirror_new(void);
void genmirror_free(genmirror *m);

/* The value of name; 0 when the copy has none (as an absent counter). */
uint64_t genmirror_get(const genmirror *m, const char *name);

/* One whole read: begin, one observe per counter read, end. observe and
 * end return true on a regression (observe: this value is lower than the
 * copy; end: a counter of the copy, above 0, was not in the read). */
void genmirror_begin(genmirror *m);
bool genmirror_observe(genmirror *m, const char *name, size_t len, uint64_t value);
bool genmirror_end(genmirror *m);
/* One value known outside a whole read (an increment's answer). */
void genmirror_raise(genmirror *m, const char *name, uint64_t value);

/* Counters held, and the i-th of them (i < genmirror_count), in no order. */
size_t genmirror_count(const genmirror *m);
void genmirror_at(const genmirror *m, size_t i, const char **name, uint64_t *value);

#endif
