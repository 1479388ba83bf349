/* scope: the names of the scoped generation counters and their local
 * buckets (scope.h says which change bumps which). Pure code. */
#include "quotecache/scope.h"

#include <stdbool.h>
#include <string.h>

#include "quotecache/strbuf.h"

/* The middle of each counter's name, before ":gen". */
static void put_scope(strbuf *b, const scope *s)
{
    switch (s->kind) {
    case SCOPE_PRODUCT:
    case SCOPE_PRODUCT_REGION:
        strbuf_mem(b, "{", 1);
        strbuf_i64(b, s->product_id);
        strbuf_mem(b, "}", 1);
        if (s->kind == SCOPE_PRODUCT_REGION) {
            strbuf_mem(b, ":r:", 3);
            strbuf_str(b, s->name);
        }
        return;
    case SCOPE_CURRENCY:
        strbuf_mem(b, "fx:", 3);
        break;
    case SCOPE_TIER:
        strbuf_mem(b, "tier:", 5);
        break;
    case SCOPE_REGION_PROMOS:
    case SCOPE_KINDS:
        strbuf_mem(b, "promo:", 6);
        break;
    }
    strbuf_str(b, s->name);
}

void scope_key(char out[KEY_MAX], const char *version, const scope *s)
{
    strbuf b = strbuf_on(out, KEY_MAX);
    strbuf_mem(&b, "qc:", 3);
    strbuf_str(&b, version);
    strbuf_mem(&b, ":", 1);
    put_scope(&b, s);
    strbuf_mem(&b, ":gen", 4);
    if (!strbuf_ok(&b))
        out[0] = '\0';
}

static void set_name(scope *s, scope_kind kind, int64_t product_id, const char *name)
{
    s->kind = kind;
    s->product_id = product_id;
    size_t n = strnlen(name, REQUEST_NAME_MAX);
    memcpy(s->name, name, n);
    s->name[n] = '\0';
}

void scope_of_quote(const quote_req *r, scope out[SCOPE_KINDS])
{
    set_name(&out[SCOPE_PRODUCT], SCOPE_PRODUCT, r->product_id, "");
    set_name(&out[SCOPE_PRODUCT_REGION], SCOPE_PRODUCT_REGION, r->product_id, r->region);
    set_name(&out[SCOPE_CURRENCY], SCOPE_CURRENCY, 0, r->currency);
    set_name(&out[SCOPE_TIER], SCOPE_TIER, 0, r->tier);
    set_name(&out[SCOPE_REGION_PROMOS], SCOPE_REGION_PROMOS, 0, r->region);
}

void scope_keys_of(scope_keys *out, const char *version, const quote_req *r)
{
    scope s[SCOPE_KINDS];
    scope_of_quote(r, s);
    for (int i = 0; i < SCOPE_KINDS; i++)
        scope_key(out->key[i], version, &s[i]);
}

/* FNV-1a over the kind, the product and the name. */
uint32_t scope_bucket(const scope *s, uint32_t nbuckets)
{
    uint32_t h = 2166136261u;
    uint64_t pid = (uint64_t)s->product_id;
    h = (h ^ (uint32_t)s->kind) * 16777619u;
    for (int i = 0; i < 8; i++, pid >>= 8)
        h = (h ^ (uint32_t)(pid & 0xff)) * 16777619u;
    for (const char *p = s->name; *p != '\0'; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    return h % nbuckets;
}

static bool is_letter(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

int scope_named(scope *out, scope_kind kind, int64_t product_id, const char *name, size_t len)
{
    bool upper = kind != SCOPE_TIER;
    if (len == 0 || len > REQUEST_NAME_MAX || (kind == SCOPE_CURRENCY && len != 3))
        return -1;
    memset(out, 0, sizeof(*out));
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        if (!is_letter(c))
            return -1;
        if (upper && c >= 'a')
            c = (char)(c - 'a' + 'A');
        else if (!upper && c < 'a')
            c = (char)(c - 'A' + 'a');
        out->name[i] = c;
    }
    out->kind = kind;
    out->product_id = product_id;
    return 0;
}
