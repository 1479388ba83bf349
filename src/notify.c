/* notify: the grammar of change-notification payloads. Anyone who can run
 * NOTIFY on the database can send one, so the payload is hostile: it is
 * bounded, the table must look like a table name, the txid and the id must
 * be exactly digits (no sign, no spaces, no overflow). An unknown but well-formed table
 * is accepted, as the old parser in invalidate.c did, so that a trigger on a
 * new table invalidates rather than being silently ignored. */
#include "quotecache/notify.h"

#include <string.h>

static bool table_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

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

static bool is_catalog_table(const char *t)
{
    return strcmp(t, "promotions") == 0 || strcmp(t, "tiers") == 0 || strcmp(t, "fx_rates") == 0;
}

int notify_parse(const char *payload, notify_msg *out)
{
    notify_msg m;
    size_t tlen = 0;

    if (payload == NULL)
        return -1;
    memset(&m, 0, sizeof(m));
    while (tlen <= NOTIFY_TABLE_MAX && table_char(payload[tlen]))
        tlen++;
    if (tlen == 0 || tlen > NOTIFY_TABLE_MAX || payload[tlen] != ':')
        return -1;
    memcpy(m.table, payload, tlen);
    m.table[tlen] = '\0';
    const char *id = payload + tlen + 1;
    size_t xlen = strspn(id, "0123456789");
    if (id[xlen] == ':') { /* the txid is there: the id follows it */
        if (xlen == 0 || xlen > NOTIFY_TXID_MAX)
            return -1;
        memcpy(m.txid, id, xlen);
        m.txid[xlen] = '\0';
        id += xlen + 1;
    }
    if (strcmp(id, "*") == 0)
        m.product_id = 0;
    else if (parse_id(id, &m.product_id) < 0)
        return -1;
    m.in_catalog = is_catalog_table(m.table);
    *out = m;
    return 0;
}
