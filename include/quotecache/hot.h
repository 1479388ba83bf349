/* hot: the in-process tier of the cache, a two-way set-associative table
 * of encoded entries (envelopes), keyed by the normalized request. Pure: no
 * I/O, no clock of its own.
 *
 * A hit costs a 64-bit hash of the request (product, region, tier,
 * currency and the hash of its promotion set) and a comparison of the
 * request: no digest (the SHA-256 entry key is computed only on the way to
 * Redis). Two ways per set, the one used least recently evicted, so two
 * hot keys whose hashes share a set do not evict each other. Each entry is
 * also kept under its Redis entry key, so an announcement (which names the
 * entry key) drops it. Each entry carries a stamp (the caller's
 * invalidation counter when the entry was read) and an expiry; a lookup
 * with another stamp, or after the expiry, misses.
 *
 * A stored entry keeps its ready-to-send parts (decoded envelope, body,
 * quoted ETag), and its bytes are reference-counted, so a holder can keep
 * the body (hot_value_ref) while the entry is replaced underneath it. */
#ifndef QUOTECACHE_HOT_H
#define QUOTECACHE_HOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quotecache/envelope.h"
#include "quotecache/key.h"
#include "quotecache/request.h"

typedef struct hot hot;

/* The normalized request an entry answers. */
typedef struct hot_req {
    const quote_req *r;
    const int64_t *promos; /* ascending */
    size_t npromos;
    uint64_t promo_hash; /* promoset's hash of promos */
} hot_req;

/* The bytes of one stored copy, shared by the table and the replies that
 * send them. */
typedef struct hot_value hot_value;

/* A stored copy: read-only to callers; valid until the next hot_put,
 * hot_drop or hot_clear (take a hot_value_ref to keep its bytes longer). */
typedef struct hot_entry {
    envelope env;
    const char *value; /* envelope bytes */
    size_t len;
    const char *body; /* inside value */
    size_t body_len;
    char etag_quoted[ENVELOPE_ETAG_LEN + 3]; /* "\"<etag>\"" (status 200 only) */
} hot_entry;

/* slots is rounded up to a power of two (at least 2); values longer than
 * max_value, or not well-formed envelopes, are not kept. */
hot *hot_new(size_t slots, size_t max_value);
void hot_free(hot *h);

uint64_t hot_hash(const hot_req *k);
/* The entry for k if its stamp equals stamp and now_ms < its expiry, else
 * NULL. */
const hot_entry *hot_get(hot *h, const hot_req *k, uint64_t stamp, int64_t now_ms);
/* Stores a copy of value for k (entry_key: its Redis entry key), in its
 * own slot if k has one (only the stamp and expiry change when the bytes
 * are the same), else in a free way or the way least recently used. */
void hot_put(hot *h, const hot_req *k, const char *entry_key, const char *value, size_t len,
             uint64_t stamp, int64_t expires_ms);
/* Forgets the copy stored under entry_key, if any. */
void hot_drop(hot *h, const char *entry_key);
void hot_clear(hot *h);
/* Entries held (expired ones included until replaced). */
size_t hot_count(const hot *h);

/* Takes a reference to the bytes of e (e must come from hot_get just now). */
hot_value *hot_value_ref(const hot_entry *e);
void hot_value_unref(hot_value *v);

#endif
