/* genmirror: see genmirror.h. An array of names and values (a worker's
 * dimensions are tens: currencies, tiers, regions) with an open-addressing
 * index over it, grown by doubling. */
#include "quotecache/genmirror.h"

#include <stdlib.h>
#include <string.h>

#include "quotecache/mem.h"

struct gm_item {
    char *name;
    uint64_t value;
    unsigned seen; /* the read (epoch) that last had it */
};

struct genmirror {
    struct gm_item *items;
    size_t n, cap;
    uint32_t *index; /* item + 1, 0: empty; nindex a power of two > 2 n */
    size_t nindex;
    unsigned epoch;
};

static uint32_t hash(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

static void reindex(genmirror *m, size_t nindex)
{
    free(m->index);
    m->nindex = nindex;
    m->index = xcalloc(nindex, sizeof(*m->index));
    for (size_t i = 0; i < m->n; i++) {
        const char *s = m->items[i].name;
        size_t at = hash(s, strlen(s)) & (nindex - 1);
        while (m->index[at] != 0)
            at = (at + 1) & (nindex - 1);
        m->index[at] = (uint32_t)(i + 1);
    }
}

genmirror *genmirror_new(void)
{
    genmirror *m = xcalloc(1, sizeof(*m));
    reindex(m, 16);
    return m;
}

void genmirror_free(genmirror *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        free(m->items[i].name);
    free(m->items);
    free(m->index);
    free(m);
}

static struct gm_item *find(const genmirror *m, const char *name, size_t len)
{
    size_t at = hash(name, len) & (m->nindex - 1);
    for (; m->index[at] != 0; at = (at + 1) & (m->nindex - 1)) {
        struct gm_item *it = &m->items[m->index[at] - 1];
        if (strncmp(it->name, name, len) == 0 && it->name[len] == '\0')
            return it;
    }
    return NULL;
}

static struct gm_item *add(genmirror *m, const char *name, size_t len)
{
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 16;
        m->items = xrealloc(m->items, m->cap * sizeof(*m->items));
    }
    struct gm_item *it = &m->items[m->n++];
    it->name = xmalloc(len + 1);
    memcpy(it->name, name, len);
    it->name[len] = '\0';
    it->value = 0;
    it->seen = m->epoch;
    if (m->n * 2 >= m->nindex)
        reindex(m, m->nindex * 2);
    else
        reindex(m, m->nindex); /* simple: inserts are rare (a new dimension) */
    return it;
}

uint64_t genmirror_get(const genmirror *m, const char *name)
{
    const struct gm_item *it = find(m, name, strlen(name));
    return it ? it->value : 0;
}

void genmirror_begin(genmirror *m)
{
    m->epoch++;
}

bool genmirror_observe(genmirror *m, const char *name, size_t len, uint64_t value)
{
    struct gm_item *it = find(m, name, len);
    if (it == NULL)
        it = add(m, name, len);
    it->seen = m->epoch;
    if (value < it->value)
        return true;
    it->value = value;
    return false;
}

bool genmirror_end(genmirror *m)
{
    bool lost = false;
    for (size_t i = 0; i < m->n; i++)
        lost |= m->items[i].seen != m->epoch && m->items[i].value > 0;
    return lost;
}

void genmirror_raise(genmirror *m, const char *name, uint64_t value)
{
    size_t len = strlen(name);
    struct gm_item *it = find(m, name, len);
    if (it == NULL)
        it = add(m, name, len);
    if (value > it->value)
        it->value = value;
}

size_t genmirror_count(const genmirror *m)
{
    return m->n;
}

void genmirror_at(const genmirror *m, size_t i, const char **name, uint64_t *value)
{
    *name = m->items[i].name;
    *value = m->items[i].value;
}
