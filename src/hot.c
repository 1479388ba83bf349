/* hot: owns the slots of the in-process tier, the copies in them (shared
 * with replies through their reference counts) and the index of the slots
 * by Redis entry key. */
#include "quotecache/hot.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/hash.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"

#define WAYS 2
#define NIL UINT32_MAX

struct hot_value {
    size_t refs;
    size_t len;
    char data[];
};

typedef struct slot {
    hot_entry e;     /* first: hot_value_ref finds the slot from it */
    hot_value *v;    /* NULL: empty */
    uint64_t hash;   /* hot_hash of the request */
    quote_req r;     /* the request, compared on a hash match */
    int64_t *promos; /* its promotion set (NULL when empty) */
    size_t npromos;
    uint64_t promo_hash;
    char entry_key[KEY_MAX];
    uint32_t key_next; /* next slot in its entry-key bucket */
    uint64_t stamp;
    int64_t expires_ms;
    uint64_t used; /* h->tick at the last get or put */
} slot;

struct hot {
    slot *slots;
    uint32_t *by_key; /* bucket heads, by hash of entry key */
    size_t mask;      /* of sets */
    size_t nslots;
    size_t max_value;
    size_t count;
    uint64_t tick;
};

hot *hot_new(size_t slots, size_t max_value)
{
    size_t n = WAYS;
    while (n < slots)
        n <<= 1;
    hot *h = xcalloc(1, sizeof(*h));
    h->slots = xcalloc(n, sizeof(slot));
    h->by_key = xmalloc(n * sizeof(uint32_t));
    for (size_t i = 0; i < n; i++) {
        h->by_key[i] = NIL;
        h->slots[i].key_next = NIL;
    }
    h->nslots = n;
    h->mask = n / WAYS - 1;
    h->max_value = max_value;
    return h;
}

void hot_value_unref(hot_value *v)
{
    if (v != NULL && --v->refs == 0)
        free(v);
}

hot_value *hot_value_ref(const hot_entry *e)
{
    hot_value *v = ((const slot *)(const void *)e)->v;
    v->refs++;
    return v;
}

static uint32_t *bucket_of(hot *h, const char *entry_key)
{
    return &h->by_key[hash_str(entry_key) & (h->nslots - 1)];
}

static void slot_empty(hot *h, slot *s)
{
    if (s->v == NULL)
        return;
    metrics_gauge_add(G_HOT_ENTRIES, -1);
    metrics_gauge_add(G_HOT_BYTES, -(int64_t)(strlen(s->entry_key) + s->v->len));
    uint32_t me = (uint32_t)(s - h->slots);
    for (uint32_t *p = bucket_of(h, s->entry_key); *p != NIL; p = &h->slots[*p].key_next) {
        if (*p == me) {
            *p = s->key_next;
            break;
        }
    }
    hot_value_unref(s->v);
    free(s->promos);
    memset(s, 0, sizeof(*s));
    s->key_next = NIL;
    h->count--;
}

void hot_clear(hot *h)
{
    for (size_t i = 0; i < h->nslots; i++)
        slot_empty(h, &h->slots[i]);
}

void hot_free(hot *h)
{
    if (h == NULL)
        return;
    hot_clear(h);
    free(h->slots);
    free(h->by_key);
    free(h);
}

static uint64_t mix(uint64_t h, uint64_t x)
{
    h ^= x;
    h *= 0x9fb21c651e98df25ULL;
    return h ^ (h >> 29);
}

uint64_t hot_hash(const hot_req *k)
{
    uint64_t h = mix(k->promo_hash, (uint64_t)k->r->product_id);
    return mix(h, hash_str(k->r->region) ^ (hash_str(k->r->tier) * 31) ^
                      (hash_str(k->r->currency) * 1031));
}

static bool slot_is(const slot *s, uint64_t hash, const hot_req *k)
{
    return s->v != NULL && s->hash == hash && s->r.product_id == k->r->product_id &&
           s->promo_hash == k->promo_hash && s->npromos == k->npromos &&
           strcmp(s->r.region, k->r->region) == 0 && strcmp(s->r.tier, k->r->tier) == 0 &&
           strcmp(s->r.currency, k->r->currency) == 0 &&
           (k->npromos == 0 || memcmp(s->promos, k->promos, k->npromos * sizeof(int64_t)) == 0);
}

static slot *find(hot *h, uint64_t hash, const hot_req *k)
{
    slot *set = &h->slots[(hash & h->mask) * WAYS];
    for (int w = 0; w < WAYS; w++) {
        if (slot_is(&set[w], hash, k))
            return &set[w];
    }
    return NULL;
}

const hot_entry *hot_get(hot *h, const hot_req *k, uint64_t stamp, int64_t now_ms)
{
    slot *s = find(h, hot_hash(k), k);
    if (s == NULL || s->stamp != stamp || now_ms >= s->expires_ms)
        return NULL;
    s->used = ++h->tick;
    return &s->e;
}

void hot_drop(hot *h, const char *entry_key)
{
    uint32_t i = *bucket_of(h, entry_key);
    while (i != NIL) {
        slot *s = &h->slots[i];
        i = s->key_next;
        if (strcmp(s->entry_key, entry_key) == 0)
            slot_empty(h, s);
    }
}

/* The way a new request takes: a free one, else the least recently used. */
static slot *victim(hot *h, uint64_t hash)
{
    slot *set = &h->slots[(hash & h->mask) * WAYS];
    slot *best = &set[0];
    for (int w = 0; w < WAYS; w++) {
        if (set[w].v == NULL)
            return &set[w];
        if (set[w].used < best->used)
            best = &set[w];
    }
    return best;
}

/* Fills e from the bytes of v; false when they are not an envelope. */
static bool entry_fill(hot_entry *e, const hot_value *v)
{
    if (envelope_decode(v->data, v->len, &e->env, &e->body, &e->body_len) < 0)
        return false;
    e->value = v->data;
    e->len = v->len;
    e->etag_quoted[0] = '\0';
    if (e->env.status == 200)
        snprintf(e->etag_quoted, sizeof(e->etag_quoted), "\"%s\"", e->env.etag);
    return true;
}

void hot_put(hot *h, const hot_req *k, const char *entry_key, const char *value, size_t len,
             uint64_t stamp, int64_t expires_ms)
{
    if (len > h->max_value || strlen(entry_key) >= KEY_MAX)
        return;
    uint64_t hash = hot_hash(k);
    slot *s = find(h, hash, k);
    if (s != NULL && s->v->len == len && memcmp(s->v->data, value, len) == 0 &&
        strcmp(s->entry_key, entry_key) == 0) {
        s->stamp = stamp; /* the same bytes, read again: only later expiry */
        s->expires_ms = expires_ms;
        s->used = ++h->tick;
        return;
    }
    hot_value *v = xmalloc(sizeof(*v) + (len ? len : 1));
    v->refs = 1;
    v->len = len;
    memcpy(v->data, value, len);
    hot_entry e;
    if (!entry_fill(&e, v)) {
        free(v);
        return;
    }
    if (s == NULL)
        s = victim(h, hash);
    slot_empty(h, s);
    s->e = e;
    s->v = v;
    s->hash = hash;
    s->r = *k->r;
    s->npromos = k->npromos;
    s->promo_hash = k->promo_hash;
    if (k->npromos > 0) {
        s->promos = xmalloc(k->npromos * sizeof(int64_t));
        memcpy(s->promos, k->promos, k->npromos * sizeof(int64_t));
    }
    snprintf(s->entry_key, sizeof(s->entry_key), "%s", entry_key);
    uint32_t *b = bucket_of(h, entry_key);
    s->key_next = *b;
    *b = (uint32_t)(s - h->slots);
    s->stamp = stamp;
    s->expires_ms = expires_ms;
    s->used = ++h->tick;
    h->count++;
    metrics_gauge_add(G_HOT_ENTRIES, 1);
    metrics_gauge_add(G_HOT_BYTES, (int64_t)(strlen(entry_key) + len));
}

size_t hot_count(const hot *h)
{
    return h->count;
}
