/* localcache: a byte-bounded LRU of upstream answers: a chained hash table
 * of entries that are also on one recency list (head: most recent). */
#include "quotecache/localcache.h"

#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "quotecache/hash.h"
#include "quotecache/hdrlist.h"
#include "quotecache/mem.h"
#include "quotecache/proxyhdr.h"

#define BUCKETS_MIN 1024
#define ENTRY_OVERHEAD 256 /* what malloc and the table cost besides the bytes */

typedef struct entry {
    struct entry *hnext;       /* hash chain */
    struct entry *prev, *next; /* recency */
    uint64_t hash;
    char *key;
    lcache_entry pub;
    struct evkeyvalq headers;
    char *body;
    int nvary;
    char vary[HTTPCACHE_VARY_MAX][64];
    char *vary_values[HTTPCACHE_VARY_MAX];
    size_t size;
} entry;

struct lcache {
    size_t max_bytes, bytes, count;
    entry **buckets;
    size_t nbuckets; /* a power of two */
    entry *head, *tail;
};

lcache *lcache_new(size_t max_bytes)
{
    lcache *c = xcalloc(1, sizeof(*c));
    c->max_bytes = max_bytes;
    c->nbuckets = BUCKETS_MIN;
    c->buckets = xcalloc(c->nbuckets, sizeof(*c->buckets));
    return c;
}

static entry **slot_of(lcache *c, const char *key, uint64_t h)
{
    entry **p = &c->buckets[h & (c->nbuckets - 1)];
    while (*p && !((*p)->hash == h && strcmp((*p)->key, key) == 0))
        p = &(*p)->hnext;
    return p;
}

static void lru_unlink(lcache *c, entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(lcache *c, entry *e)
{
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (c->tail == NULL)
        c->tail = e;
}

static void entry_free(entry *e)
{
    hdrlist_clear(&e->headers);
    for (int i = 0; i < e->nvary; i++)
        free(e->vary_values[i]);
    free(e->body);
    free(e->key);
    free(e);
}

/* Takes e out of the table and the list, and frees it. */
static void drop(lcache *c, entry *e)
{
    entry **p = slot_of(c, e->key, e->hash);
    *p = e->hnext;
    lru_unlink(c, e);
    c->bytes -= e->size;
    c->count--;
    entry_free(e);
}

static void grow(lcache *c)
{
    size_t n = c->nbuckets * 2;
    entry **b = xcalloc(n, sizeof(*b));
    for (size_t i = 0; i < c->nbuckets; i++) {
        for (entry *e = c->buckets[i], *next; e; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(c->buckets);
    c->buckets = b;
    c->nbuckets = n;
}

static char *vary_value(const struct evkeyvalq *req, const char *name)
{
    char buf[LCACHE_VARY_VALUE_MAX];
    proxyhdr_join(req, name, buf, sizeof(buf));
    return xstrdup(buf);
}

static bool vary_matches(const entry *e, const struct evkeyvalq *req)
{
    for (int i = 0; i < e->nvary; i++) {
        char buf[LCACHE_VARY_VALUE_MAX];
        proxyhdr_join(req, e->vary[i], buf, sizeof(buf));
        if (strcmp(buf, e->vary_values[i]) != 0)
            return false;
    }
    return true;
}

const lcache_entry *lcache_get(lcache *c, const char *key, const struct evkeyvalq *req,
                               int64_t now_ms)
{
    entry *e = *slot_of(c, key, hash_str(key));
    if (e == NULL)
        return NULL;
    if (now_ms >= e->pub.expires_ms) {
        drop(c, e);
        return NULL;
    }
    if (!vary_matches(e, req))
        return NULL;
    lru_unlink(c, e);
    lru_push(c, e);
    return &e->pub;
}

void lcache_delete(lcache *c, const char *key)
{
    entry *e = *slot_of(c, key, hash_str(key));
    if (e != NULL)
        drop(c, e);
}

size_t lcache_drop_if(lcache *c, lcache_pred *pred, void *arg)
{
    size_t n = 0;
    for (entry *e = c->head, *next; e != NULL; e = next) {
        next = e->next;
        if (pred(arg, e->key)) {
            drop(c, e);
            n++;
        }
    }
    return n;
}

void lcache_clear(lcache *c)
{
    while (c->head != NULL)
        drop(c, c->head);
}

static size_t headers_bytes(const struct evkeyvalq *h)
{
    size_t n = 0;
    for (const struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next)
        n += strlen(kv->key) + strlen(kv->value) + 48;
    return n;
}

int lcache_put(lcache *c, const char *key, int status, const struct evkeyvalq *headers,
               const char *body, size_t len, const struct evkeyvalq *req,
               const httpcache_verdict *v, const lcache_times *t)
{
    /* The request's Vary values are held too (up to a kilobyte each, of
     * the client's choosing): counted, or the bound would not hold. */
    char *values[HTTPCACHE_VARY_MAX];
    size_t size = ENTRY_OVERHEAD + strlen(key) + len + headers_bytes(headers);
    for (int i = 0; i < v->nvary; i++) {
        values[i] = vary_value(req, v->vary[i]);
        size += strlen(values[i]) + 1;
    }
    if (size > c->max_bytes / 8) {
        for (int i = 0; i < v->nvary; i++)
            free(values[i]);
        return -1;
    }
    lcache_delete(c, key);
    while (c->bytes + size > c->max_bytes && c->tail != NULL)
        drop(c, c->tail);
    entry *e = xcalloc(1, sizeof(*e));
    e->key = xstrdup(key);
    e->hash = hash_str(key);
    e->size = size;
    TAILQ_INIT(&e->headers);
    hdrlist_copy(&e->headers, headers);
    e->body = xmalloc(len + 1);
    if (len > 0) /* an empty evbuffer pulls up to NULL */
        memcpy(e->body, body, len);
    e->nvary = v->nvary;
    for (int i = 0; i < v->nvary; i++) {
        memcpy(e->vary[i], v->vary[i], sizeof(e->vary[i]));
        e->vary_values[i] = values[i];
    }
    e->pub = (lcache_entry){status,
                            &e->headers,
                            e->body,
                            len,
                            t->stored_ms,
                            t->fresh_until_ms,
                            t->expires_ms,
                            evhttp_find_header(&e->headers, "ETag"),
                            evhttp_find_header(&e->headers, "Last-Modified"),
                            e->nvary,
                            (const char(*)[64])e->vary};
    entry **p = slot_of(c, key, e->hash);
    *p = e;
    lru_push(c, e);
    c->bytes += size;
    c->count++;
    if (c->count > c->nbuckets)
        grow(c);
    return 0;
}

size_t lcache_bytes(const lcache *c)
{
    return c->bytes;
}

size_t lcache_count(const lcache *c)
{
    return c->count;
}

void lcache_free(lcache *c)
{
    if (c == NULL)
        return;
    while (c->head)
        drop(c, c->head);
    free(c->buckets);
    free(c);
}
