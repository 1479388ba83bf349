/* sharedhot: an lcache of decoded entries under stamped keys ("<stamp
 * hex>\n<canonical request>"), and the counters the stamps are made of. */
#include "quotecache/sharedhot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/hash.h"
#include "quotecache/hex.h"
#include "quotecache/mem.h"
#include "quotecache/proxyhdr.h"

#define BUCKETS 4096 /* a power of two: resources per counter ~ 1/4096 */
#define STAMP_HEX 16

struct shot {
    lcache *lc;
    uint64_t all;
    uint64_t bucket[BUCKETS];
};

shot *shot_new(size_t max_bytes)
{
    shot *t = xcalloc(1, sizeof(*t));
    t->lc = lcache_new(max_bytes);
    return t;
}

void shot_free(shot *t)
{
    if (t == NULL)
        return;
    lcache_free(t->lc);
    free(t);
}

static uint64_t *bucket_of(shot *t, const char *resource)
{
    return &t->bucket[hash_str(resource) & (BUCKETS - 1)];
}

uint64_t shot_stamp(const shot *t, const char *resource)
{
    return t->all + *bucket_of((shot *)t, resource);
}

void shot_drop_resource(shot *t, const char *resource)
{
    (*bucket_of(t, resource))++;
}

void shot_drop_all(shot *t)
{
    t->all++;
    lcache_clear(t->lc);
}

/* The table's key: the stamp in hex by hand (a snprintf per hit costs
 * more than the rest of the key), then the canonical request. NULL when
 * it does not fit. */
static char *key_of(char *buf, size_t len, uint64_t stamp, const char *canon)
{
    size_t n = strlen(canon);
    if (STAMP_HEX + 1 + n + 1 > len)
        return NULL;
    hex_u64(stamp, buf);
    buf[STAMP_HEX] = '\n';
    memcpy(buf + STAMP_HEX + 1, canon, n + 1);
    return buf;
}

/* True when lcache's comparison of req's values of the Vary fields names
 * is exact, as a Redis hit's (skey_vary_matches, whole values, absent
 * unlike empty) is: each field at most once (lcache joins repeats; such a
 * request is no variant), not empty (lcache reads it as absent), and
 * shorter than lcache's cut (two Cookie fields alike in their first
 * kilobyte would be one variant: one user's answer to another). */
static bool vary_exact(int n, const char (*names)[64], const struct evkeyvalq *req)
{
    for (int i = 0; i < n; i++) {
        const char *v = NULL;
        int count = proxyhdr_count(req, names[i], &v);
        if (count > 1 || (count == 1 && (v[0] == '\0' || strlen(v) >= LCACHE_VARY_VALUE_MAX - 1)))
            return false;
    }
    return true;
}

const lcache_entry *shot_get(shot *t, const char *canon, uint64_t stamp,
                             const struct evkeyvalq *req, int64_t now_ms, int64_t mono_ms)
{
    char buf[STAMP_HEX + 1 + SKEY_CANON_MAX];
    const char *key = key_of(buf, sizeof(buf), stamp, canon);
    if (key == NULL)
        return NULL;
    /* lcache's expiry is on the monotonic clock; freshness on the wall. */
    const lcache_entry *e = lcache_get(t->lc, key, req, mono_ms);
    if (e != NULL && (now_ms >= e->fresh_until_ms || !vary_exact(e->nvary, e->vary, req)))
        return NULL;
    return e;
}

void shot_put(shot *t, const char *canon, uint64_t stamp, const skey_entry *e,
              const struct evkeyvalq *headers, const struct evkeyvalq *req, int64_t now_ms,
              int64_t mono_ms)
{
    int64_t left = e->fresh_until_ms - now_ms;
    if (left > SHOT_MS)
        left = SHOT_MS;
    if (left <= 0 || e->nvary > HTTPCACHE_VARY_MAX ||
        !vary_exact(e->nvary, (const char(*)[64])e->vary, req))
        return;
    char buf[STAMP_HEX + 1 + SKEY_CANON_MAX];
    const char *key = key_of(buf, sizeof(buf), stamp, canon);
    if (key == NULL)
        return;
    httpcache_verdict v = {.store = true, .nvary = e->nvary};
    memcpy(v.vary, e->vary, sizeof(v.vary[0]) * (size_t)e->nvary);
    lcache_times times = {e->stored_ms, e->fresh_until_ms, mono_ms + left};
    lcache_put(t->lc, key, e->status, headers, e->body, e->len, req, &v, &times);
}

size_t shot_count(const shot *t)
{
    return lcache_count(t->lc);
}
