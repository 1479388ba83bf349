/* hot: the in-process tier of the cache, a direct-mapped table of encoded
 * entries (envelopes). Pure: no I/O, no clock of its own.
 *
 * Direct-mapped because it needs no eviction policy and no list upkeep on
 * the hot path: a key has one slot, and a colliding key simply replaces it.
 * Each entry carries a stamp (the caller's invalidation counter when the
 * entry was read) and an expiry; a lookup with another stamp, or after the
 * expiry, misses. */
#ifndef QUOTECACHE_HOT_H
#define QUOTECACHE_HOT_H

#include <stddef.h>
#include <stdint.h>

typedef struct hot hot;

/* slots is rounded up to a power of two; values longer than max_value are
 * not kept. */
hot *hot_new(size_t slots, size_t max_value);
void hot_free(hot *h);

/* The value under key if its stamp equals stamp and now_ms < its expiry,
 * else NULL. The pointer is valid until the next hot_put or hot_clear. */
const char *hot_get(const hot *h, const char *key, uint64_t stamp, int64_t now_ms, size_t *len);
/* Stores a copy of value under key, replacing whatever held its slot. */
void hot_put(hot *h, const char *key, const char *value, size_t len, uint64_t stamp,
             int64_t expires_ms);
/* Forgets key's copy, if its slot holds one (another key there stays). */
void hot_drop(hot *h, const char *key);
void hot_clear(hot *h);
/* Entries held (expired ones included until replaced). */
size_t hot_count(const hot *h);

#endif
