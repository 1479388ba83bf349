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
    split_head(payload, (size_t)(colon - payload), &m);
    m.in_catalog = is_catalog_table(&m);
    *out = m;
    return 0;
}
