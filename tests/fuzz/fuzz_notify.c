/* Fuzz target: notify_parse, on a LISTEN payload (anyone who can run
 * NOTIFY on the database can send one). Oracles: a payload is accepted
 * exactly when a product id or "*" follows its last ':' (an independent
 * check); what is accepted re-reads the same from the grammar's own
 * spelling of it. */
#include "fuzz.h"

#include <stdbool.h>

#include "quotecache/notify.h"

/* What follows the last ':' is 1..INT64_MAX in digits, or "*". */
static bool names_product(const char *s)
{
    const char *c = strrchr(s, ':');
    if (c == NULL)
        return false;
    c++;
    if (strcmp(c, "*") == 0)
        return true;
    size_t n = strlen(c);
    if (n == 0 || strspn(c, "0123456789") != n)
        return false;
    c += strspn(c, "0");
    n = strlen(c);
    return n > 0 && (n < 19 || (n == 19 && strcmp(c, "9223372036854775807") <= 0));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = fuzz_cstr(data, size);
    notify_msg m, m2;
    int rc = notify_parse(in, &m);

    FUZZ_CHECK((rc == 0) == names_product(in));
    if (rc == 0 && m.table_len <= NOTIFY_TABLE_MAX) {
        FUZZ_CHECK(strlen(m.table) == m.table_len && strncmp(in, m.table, m.table_len) == 0);
        FUZZ_CHECK(strlen(m.txid) <= NOTIFY_TXID_MAX &&
                   strspn(m.txid, "0123456789") == strlen(m.txid));
        char again[NOTIFY_TABLE_MAX + NOTIFY_TXID_MAX + 32];
        char id[24] = "*";
        if (m.product_id != 0)
            snprintf(id, sizeof(id), "%lld", (long long)m.product_id);
        snprintf(again, sizeof(again), "%s%s%s:%s", m.table, m.txid[0] ? ":" : "", m.txid, id);
        FUZZ_CHECK(notify_parse(again, &m2) == 0);
        FUZZ_CHECK(strcmp(m.table, m2.table) == 0 && strcmp(m.txid, m2.txid) == 0 &&
                   m.product_id == m2.product_id && m.in_catalog == m2.in_catalog);
    }
    free(in);
    return 0;
}
