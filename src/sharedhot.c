/* sharedhot: an lcache of decoded entries under stamped keys ("<stamp
 * hex>\n<canonical request>"), and the counters the stamps are made of. */
#include "quotecache/sharedhot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/hash.h"
#include "quotecache/hex.h"
#include "quotecache/mem.h"

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

const lcache_entry *shot_get(shot *t, const char *canon, uint64_t stamp,
                             const struct evkeyvalq *req, int64_t now_ms)
{
    char buf[STAMP_HEX + 1 + SKEY_CANON_MAX];
    const char *key = key_of(buf, sizeof(buf), stamp, canon);
    if (key == NULL)
        return NULL;
    const lcache_entry *e = lcache_get(t->lc, key, req, now_ms);
    /* lcache joins a field sent twice; the Redis entry is no variant of
     * such a request (skey_vary_same), so neither is its copy. */
    if (e != NULL && !skey_vary_same(e->nvary, e->vary, req, req))
        return NULL;
    return e;
}

void shot_put(shot *t, const char *canon, uint64_t stamp, const skey_entry *e,
              const struct evkeyvalq *headers, const struct evkeyvalq *req, int64_t now_ms)
{
    int64_t until = now_ms + SHOT_MS;
    if (until > e->fresh_until_ms)
        until = e->fresh_until_ms;
    if (until <= now_ms || e->nvary > HTTPCACHE_VARY_MAX ||
        !skey_vary_same(e->nvary, e->vary, req, req))
        return;
    char buf[STAMP_HEX + 1 + SKEY_CANON_MAX];
    const char *key = key_of(buf, sizeof(buf), stamp, canon);
    if (key == NULL)
        return;
    httpcache_verdict v = {.store = true, .nvary = e->nvary};
    memcpy(v.vary, e->vary, sizeof(v.vary[0]) * (size_t)e->nvary);
    lcache_times times = {e->stored_ms, e->fresh_until_ms, until};
    lcache_put(t->lc, key, e->status, headers, e->body, e->len, req, &v, &times);
}

size_t shot_count(const shot *t)
{
    return lcache_count(t->lc);
}
