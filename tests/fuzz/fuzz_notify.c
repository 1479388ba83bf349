/* Fuzz target: notify_parse, on a LISTEN payload (anyone who can run
 * NOTIFY on the database can send one). Oracle: an accepted payload says
 * the same thing when written back in the grammar's own spelling. */
#include "fuzz.h"

#include "quotecache/notify.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *in = fuzz_cstr(data, size);
    char again[NOTIFY_TABLE_MAX + NOTIFY_TXID_MAX + 32];
    notify_msg m, m2;

    if (notify_parse(in, &m) == 0) {
        size_t tlen = strlen(m.table);
        FUZZ_CHECK(tlen > 0 && tlen <= NOTIFY_TABLE_MAX && m.product_id >= 0);
        FUZZ_CHECK(strncmp(in, m.table, tlen) == 0 && in[tlen] == ':');
        FUZZ_CHECK(strlen(m.txid) <= NOTIFY_TXID_MAX &&
                   strspn(m.txid, "0123456789") == strlen(m.txid));
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
