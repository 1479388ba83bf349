/* sharedhot: the in-process tier of `shared` routes, in front of their
 * Redis read: copies of entries this worker read from Redis, served for
 * SHOT_MS at most (and never past their freshness). Pure: no I/O, no
 * clock of its own: the caller passes the wall clock (now_ms, what
 * freshness is in) and the monotonic one (mono_ms, what SHOT_MS is
 * counted on: a step of the wall clock must not stretch it).
 *
 * A copy is filed under a stamp: the sum of two counters that only grow,
 * one for everything (shot_drop_all) and one for the resource's bucket
 * (shot_drop_resource, which a write's announcement calls on every
 * worker). A lookup builds the key with the stamp of now, so a drop makes
 * every older copy unreachable at once (they leave by LRU and expiry),
 * and a copy read from Redis before a drop but kept after it is filed
 * under the old stamp: never found. The caller takes the stamp before it
 * reads Redis and files the copy under that one. */
#ifndef QUOTECACHE_SHAREDHOT_H
#define QUOTECACHE_SHAREDHOT_H

#include <stddef.h>
#include <stdint.h>

#include "quotecache/localcache.h"
#include "quotecache/sharedkey.h"

struct evkeyvalq;

/* Half the one second in which a write must reach every instance: the
 * bound when an announcement is lost (a subscriber hung, not yet
 * known down: one known down serves no copy). */
#define SHOT_MS 500

typedef struct shot shot;

shot *shot_new(size_t max_bytes);
void shot_free(shot *t);

/* The stamp of resource (skey_resource) now. */
uint64_t shot_stamp(const shot *t, const char *resource);
/* Makes every copy of resource's bucket unreachable. */
void shot_drop_resource(shot *t, const char *resource);
/* Makes every copy unreachable, and frees them. */
void shot_drop_all(shot *t);

/* The copy of canonical request canon (skey_canonical) filed under stamp,
 * if it is there, unexpired, and of req's Vary variant; NULL otherwise
 * (also for a request whose Vary fields a copy is never kept for). */
const lcache_entry *shot_get(shot *t, const char *canon, uint64_t stamp,
                             const struct evkeyvalq *req, int64_t now_ms, int64_t mono_ms);
/* Files a copy of decoded entry e (its fields in headers), read for req,
 * under stamp, until now + SHOT_MS or e's freshness, whichever is first.
 * Not kept: an entry no longer fresh, too large, a request that sends one
 * of e's Vary fields twice (no one value its variant is made for), empty
 * (lcache could not tell it from absent) or of LCACHE_VARY_VALUE_MAX - 1
 * bytes or more (lcache compares that much): those go to Redis. */
void shot_put(shot *t, const char *canon, uint64_t stamp, const skey_entry *e,
              const struct evkeyvalq *headers, const struct evkeyvalq *req, int64_t now_ms,
              int64_t mono_ms);

size_t shot_count(const shot *t);

#endif
