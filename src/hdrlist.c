/* hdrlist: header lists with one allocation a field. */
#include "quotecache/hdrlist.h"

#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "quotecache/httphdr.h"
#include "quotecache/mem.h"

void hdrlist_add_n(struct evkeyvalq *h, const char *name, size_t nl, const char *value, size_t vl)
{
    struct evkeyval *kv = xmalloc(sizeof(*kv) + nl + 1 + vl + 1);
    kv->key = (char *)(kv + 1);
    memcpy(kv->key, name, nl);
    kv->key[nl] = '\0';
    kv->value = kv->key + nl + 1;
    memcpy(kv->value, value, vl);
    kv->value[vl] = '\0';
    TAILQ_INSERT_TAIL(h, kv, next);
}

int hdrlist_add(struct evkeyvalq *h, const char *name, const char *value)
{
    size_t nl = strcspn(name, "\r\n"), vl = strcspn(value, "\r\n");
    if (name[nl] != '\0' || value[vl] != '\0')
        return -1;
    hdrlist_add_n(h, name, nl, value, vl);
    return 0;
}

void hdrlist_copy(struct evkeyvalq *to, const struct evkeyvalq *from)
{
    for (const struct evkeyval *kv = from->tqh_first; kv; kv = kv->next.tqe_next)
        hdrlist_add(to, kv->key, kv->value);
}

/* A field of ours holds its strings in its own block; libevent's point
 * to two more. */
static void field_free(struct evkeyval *kv)
{
    if (kv->key != (char *)(kv + 1)) {
        free(kv->key);
        free(kv->value);
    }
    free(kv);
}

int hdrlist_remove(struct evkeyvalq *h, const char *name)
{
    for (struct evkeyval *kv = h->tqh_first; kv; kv = kv->next.tqe_next) {
        if (httphdr_name_is(kv->key, name)) {
            TAILQ_REMOVE(h, kv, next);
            field_free(kv);
            return 0;
        }
    }
    return -1;
}

void hdrlist_clear(struct evkeyvalq *h)
{
    struct evkeyval *kv;
    while ((kv = h->tqh_first) != NULL) {
        TAILQ_REMOVE(h, kv, next);
        field_free(kv);
    }
}
