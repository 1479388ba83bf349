/* localcache: the in-process cache of `local` routes: an LRU bounded in
 * bytes, entries with a lifetime, one variant per key (a Vary mismatch is
 * a miss, and the next store replaces it). No I/O, no clock: the caller
 * passes the time. Keys carry the identity (see proxy.c), so a copy is
 * only ever found by the identity that stored it. */
#ifndef QUOTECACHE_LOCALCACHE_H
#define QUOTECACHE_LOCALCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quotecache/httpcache.h"

struct evkeyvalq;

typedef struct lcache lcache;

/* A Vary field's value as lcache compares it: its fields joined
 * (proxyhdr_join: an empty one reads as absent), cut to
 * LCACHE_VARY_VALUE_MAX - 1 bytes. */
#define LCACHE_VARY_VALUE_MAX 1024

/* A stored answer, read-only, valid until the next call on the cache. */
typedef struct lcache_entry {
    int status;
    const struct evkeyvalq *headers; /* end-to-end fields as stored */
    const char *body;
    size_t len;
    int64_t stored_ms, fresh_until_ms, expires_ms;
    const char *etag, *last_modified; /* NULL when absent */
    int nvary;                        /* the Vary fields it was stored for */
    const char (*vary)[64];
} lcache_entry;

/* When a copy was stored, until when it is fresh (what Cache-Status
 * says), and until when this cache may serve it (at most that). */
typedef struct lcache_times {
    int64_t stored_ms, fresh_until_ms, expires_ms;
} lcache_times;

lcache *lcache_new(size_t max_bytes);
void lcache_free(lcache *c);

/* The fresh entry for key whose Vary fields match req, or NULL (an
 * expired entry is dropped on the way). A hit becomes most recent. */
const lcache_entry *lcache_get(lcache *c, const char *key, const struct evkeyvalq *req,
                               int64_t now_ms);

/* Stores a copy (replacing key's entry), kept until t->expires_ms, with
 * req's values of v's Vary fields (v's lifetime is not read). Older entries go, least recent first,
 * until it fits; an answer over an eighth of the bound is not stored.
 * Returns 0, or -1 when not stored. */
int lcache_put(lcache *c, const char *key, int status, const struct evkeyvalq *headers,
               const char *body, size_t len, const struct evkeyvalq *req,
               const httpcache_verdict *v, const lcache_times *t);

/* Drops key's entry, if any. */
void lcache_delete(lcache *c, const char *key);

/* Drops every entry whose key pred says true for (a write's invalidation:
 * keys carry the identity, so the entries of every identity are walked).
 * O(entries). Returns how many went. */
typedef bool lcache_pred(void *arg, const char *key);
size_t lcache_drop_if(lcache *c, lcache_pred *pred, void *arg);
/* Drops everything. */
void lcache_clear(lcache *c);

size_t lcache_bytes(const lcache *c);
size_t lcache_count(const lcache *c);

#endif
