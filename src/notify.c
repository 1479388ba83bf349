/* notify: the grammar of change-notification payloads. Anyone who can run
 * NOTIFY on the database can send one, so the payload is hostile: the
 * product id must be exactly digits (no sign, no spaces, no overflow) and
 * nothing is copied without a bound. What precedes the product is read
 * leniently, as invalidate.c always did: a payload that names a product is
 * never ignored because of its head. */
#include "quotecache/notify.h"

#include <string.h>

/* Digits only, value 1..INT64_MAX (leading zeros allowed: PostgreSQL never
 * sends them, but they do not change the number). */
static int parse_id(const char *s, int64_t *out)
{
    int64_t v = 0;
    size_t n = 0;

    for (; s[n] != '\0'; n++) {
        if (s[n] < '0' || s[n] > '9')
            return -1;
        int d = s[n] - '0';
        if (v > (INT64_MAX - d) / 10)
            return -1;
        v = v * 10 + d;
    }
    if (n == 0 || v == 0)
        return -1;
    *out = v;
    return 0;
}

/* head[0..n) is "table:txid" when what follows its first ':' is 1 to
 * NOTIFY_TXID_MAX digits; then the table ends at that ':'. */
static void split_head(const char *head, size_t n, notify_msg *m)
{
    const char *mid = memchr(head, ':', n);
    size_t tlen = n;

    if (mid != NULL) {
        size_t xlen = n - (size_t)(mid + 1 - head);
        if (xlen > 0 && xlen <= NOTIFY_TXID_MAX && strspn(mid + 1, "0123456789") >= xlen) {
            memcpy(m->txid, mid + 1, xlen);
            m->txid[xlen] = '\0';
            tlen = (size_t)(mid - head);
        }
    }
    m->table_len = tlen;
    tlen = tlen < NOTIFY_TABLE_MAX ? tlen : NOTIFY_TABLE_MAX;
    memcpy(m->table, head, tlen);
    m->table[tlen] = '\0';
}

static bool is_catalog_table(const notify_msg *m)
{
    static const char *const tables[] = {"promotions", "tiers", "fx_rates"};

    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
        if (m->table_len == strlen(tables[i]) && strcmp(m->table, tables[i]) == 0)
            return true;
    }
    return false;
}

/* Splits payload at ':' into at most max fields; returns their number, or
 * max + 1 when there are more. */
static size_t split_fields(const char *payload, const char *start[], size_t len[], size_t max)
{
    size_t n = 0;
    const char *p = payload;
    for (;;) {
        const char *colon = strchr(p, ':');
        if (n == max)
            return max + 1;
        start[n] = p;
        len[n] = colon != NULL ? (size_t)(colon - p) : strlen(p);
        n++;
        if (colon == NULL)
            return n;
        p = colon + 1;
    }
}

static bool field_is(const char *f, size_t n, const char *s)
{
    return n == strlen(s) && memcmp(f, s, n) == 0;
}

static bool is_txid(const char *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (f[i] < '0' || f[i] > '9')
            return false;
    }
    return n > 0 && n <= NOTIFY_TXID_MAX;
}

/* "promo:<txid>:<id>:<region|*>:<product|*>" (fields 3 and 4) into m. */
static void promo_reach(const char *region, size_t rlen, int64_t product_id, notify_msg *m)
{
    bool any_region = field_is(region, rlen, "*");
    if (any_region) {
        m->reach = NOTIFY_REACH_PRODUCT; /* one product, or (0) every quote */
        m->product_id = product_id;
        return;
    }
    scope_kind k = product_id > 0 ? SCOPE_PRODUCT_REGION : SCOPE_REGION_PROMOS;
    if (scope_named(&m->scope, k, product_id, region, rlen) == 0)
        m->reach = NOTIFY_REACH_SCOPE;
}

/* The payloads of this version's triggers (notify.h). Returns false when
 * payload is not one (then it is read as an older one). m->product_id holds
 * the last field already. */
static bool parse_scoped(const char *payload, notify_msg *m)
{
    const char *f[6];
    size_t n[6];
    size_t nf = split_fields(payload, f, n, 5);
    if (nf < 4 || nf > 5 || !is_txid(f[1], n[1]))
        return false;
    bool promo = field_is(f[0], n[0], "promo");
    if (promo != (nf == 5))
        return false;
    if (!promo && m->product_id != 0)
        return false;
    m->reach = NOTIFY_REACH_PRODUCT; /* with product 0 (everything) unless narrowed */
    if (field_is(f[0], n[0], "fx")) {
        if (scope_named(&m->scope, SCOPE_CURRENCY, 0, f[2], n[2]) == 0)
            m->reach = NOTIFY_REACH_SCOPE;
    } else if (field_is(f[0], n[0], "tier")) {
        if (scope_named(&m->scope, SCOPE_TIER, 0, f[2], n[2]) == 0)
            m->reach = NOTIFY_REACH_SCOPE;
    } else if (field_is(f[0], n[0], "catalog")) {
        m->reach = NOTIFY_REACH_NONE;
    } else if (promo) {
        promo_reach(f[3], n[3], m->product_id, m);
    } else {
        return false;
    }
    memcpy(m->txid, f[1], n[1]);
    m->txid[n[1]] = '\0';
    m->table_len = n[0];
    memcpy(m->table, f[0], n[0]);
    m->table[n[0]] = '\0';
    m->reload_catalog = true;
    return true;
}

int notify_parse(const char *payload, notify_msg *out)
{
    notify_msg m;

    if (payload == NULL)
        return -1;
    const char *colon = strrchr(payload, ':');
    if (colon == NULL)
        return -1;
    memset(&m, 0, sizeof(m));
    if (strcmp(colon + 1, "*") == 0)
        m.product_id = 0;
    else if (parse_id(colon + 1, &m.product_id) < 0)
        return -1;
    if (!parse_scoped(payload, &m)) {
        m.reach = NOTIFY_REACH_PRODUCT;
        split_head(payload, (size_t)(colon - payload), &m);
        m.in_catalog = is_catalog_table(&m);
    }
    *out = m;
    return 0;
}
