/* quote: renders the quote document. cJSON stores numbers as doubles, which
 * cannot hold every int64; integers are therefore inserted as raw decimal
 * text, so product ids and money stay exact. */
#include "quotecache/quote.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quotecache/mem.h"

static cJSON *int_item(int64_t v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%" PRId64, v);
    return cJSON_CreateRaw(buf);
}

static void add_int(cJSON *obj, const char *name, int64_t v)
{
    cJSON_AddItemToObject(obj, name, int_item(v));
}

static char *render(cJSON *doc, size_t *len)
{
    char *text = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    if (text == NULL) {
        fprintf(stderr, "quotecache: out of memory rendering JSON\n");
        abort();
    }
    /* Hand out memory from our allocator so callers free() it uniformly. */
    char *out = xstrdup(text);
    cJSON_free(text);
    *len = strlen(out);
    return out;
}

char *quote_render(const quote *q, size_t *len)
{
    int64_t total;
    /* List prices are bigint in the database and the tax service may answer
     * up to 2^53: their sum can leave int64, and a wrapped total is a wrong
     * price. Refuse instead; the caller answers 500. */
    if (__builtin_add_overflow(q->unit_price_cents, q->tax_cents, &total))
        return NULL;
    cJSON *doc = cJSON_CreateObject();
    add_int(doc, "product_id", q->req.product_id);
    cJSON_AddStringToObject(doc, "region", q->req.region);
    cJSON_AddStringToObject(doc, "tier", q->req.tier);
    cJSON_AddStringToObject(doc, "currency", q->req.currency);
    cJSON *promos = cJSON_AddArrayToObject(doc, "promo_ids");
    for (size_t i = 0; i < q->npromos; i++)
        cJSON_AddItemToArray(promos, int_item(q->promo_ids[i]));
    add_int(doc, "unit_price_cents", q->unit_price_cents);
    add_int(doc, "tax_cents", q->tax_cents);
    add_int(doc, "total_cents", total);
    cJSON *ladder = cJSON_AddArrayToObject(doc, "volume_pricing");
    for (size_t i = 0; i < q->nbreaks; i++) {
        const quote_break *b = &q->breaks[i];
        cJSON *e = cJSON_CreateObject();
        add_int(e, "min_qty", b->min_qty);
        if (b->open)
            cJSON_AddNullToObject(e, "max_qty");
        else
            add_int(e, "max_qty", b->max_qty);
        add_int(e, "unit_price_cents", b->unit_price_cents);
        cJSON_AddItemToArray(ladder, e);
    }
    return render(doc, len);
}

char *quote_render_error(const char *code, const char *message, size_t *len)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON_AddStringToObject(doc, "error", code);
    cJSON_AddStringToObject(doc, "message", message);
    return render(doc, len);
}

int quote_parse_id_array(const char *text, int64_t *out, size_t max)
{
    size_t n = strlen(text);
    if (n < 2 || text[0] != '{' || text[n - 1] != '}')
        return -1;
    const char *p = text + 1;
    size_t count = 0;
    if (*p == '}')
        return n == 2 ? 0 : -1;
    for (;;) {
        char *end;
        /* strtoll would also take leading spaces and a '+': not ours. */
        if (!(*p == '-' || (*p >= '0' && *p <= '9')))
            return -1;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        if (end == p || errno != 0 || count == max)
            return -1;
        out[count++] = v;
        if (*end == '}')
            return end == text + n - 1 ? (int)count : -1; /* nothing after it */
        if (*end != ',')
            return -1;
        p = end + 1;
    }
}
