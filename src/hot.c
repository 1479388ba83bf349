/* hot: owns the slots of the in-process tier and the copies in them. */
#include "quotecache/hot.h"

#include <stdlib.h>
#include <string.h>

#include "quotecache/hash.h"
#include "quotecache/mem.h"
#include "quotecache/metrics.h"

typedef struct slot {
    char *key; /* NULL: empty */
    char *value;
    size_t len;
    uint64_t stamp;
    int64_t expires_ms;
} slot;

struct hot {
    slot *slots;
    size_t mask;
    size_t max_value;
    size_t count;
};

hot *hot_new(size_t slots, size_t max_value)
{
    size_t n = 1;
    while (n < slots)
        n <<= 1;
    hot *h = xcalloc(1, sizeof(*h));
    h->slots = xcalloc(n, sizeof(slot));
    h->mask = n - 1;
    h->max_value = max_value;
    return h;
}

static void slot_empty(hot *h, slot *s)
{
    if (s->key == NULL)
        return;
    metrics_gauge_add(G_HOT_ENTRIES, -1);
    metrics_gauge_add(G_HOT_BYTES, -(int64_t)(strlen(s->key) + s->len));
    free(s->key);
    free(s->value);
    memset(s, 0, sizeof(*s));
    h->count--;
}

void hot_clear(hot *h)
{
    for (size_t i = 0; i <= h->mask; i++)
        slot_empty(h, &h->slots[i]);
}

void hot_free(hot *h)
{
    if (h == NULL)
        return;
    hot_clear(h);
    free(h->slots);
    free(h);
}

const char *hot_get(const hot *h, const char *key, uint64_t stamp, int64_t now_ms, size_t *len)
{
    const slot *s = &h->slots[hash_str(key) & h->mask];
    if (s->key == NULL || s->stamp != stamp || now_ms >= s->expires_ms || strcmp(s->key, key) != 0)
        return NULL;
    *len = s->len;
    return s->value;
}

void hot_drop(hot *h, const char *key)
{
    slot *s = &h->slots[hash_str(key) & h->mask];
    if (s->key != NULL && strcmp(s->key, key) == 0)
        slot_empty(h, s);
}

void hot_put(hot *h, const char *key, const char *value, size_t len, uint64_t stamp,
             int64_t expires_ms)
{
    if (len > h->max_value)
        return;
    slot *s = &h->slots[hash_str(key) & h->mask];
    slot_empty(h, s);
    s->key = xstrdup(key);
    s->value = xmalloc(len ? len : 1);
    memcpy(s->value, value, len);
    s->len = len;
    s->stamp = stamp;
    s->expires_ms = expires_ms;
    h->count++;
    metrics_gauge_add(G_HOT_ENTRIES, 1);
    metrics_gauge_add(G_HOT_BYTES, (int64_t)(strlen(key) + len));
}

size_t hot_count(const hot *h)
{
    return h->count;
}
