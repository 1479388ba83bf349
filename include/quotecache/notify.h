/* notify: parses the payload of a change notification on the "quotecache"
 * channel. Pure code.
 *
 * Grammar (scripts/sql/triggers.sql and invalidate_purge):
 *   payload    = table [ ":" txid ] ":" ( product-id / "*" )
 *   table      = 1*63 of [a-z0-9_]  (a table of legacy-backend.md, or "admin")
 *   txid       = 1*20 DIGIT         (the writing transaction, txid_current())
 *   product-id = decimal digits, no sign or spaces, 1 .. INT64_MAX
 * "*" means every product. */
#ifndef QUOTECACHE_NOTIFY_H
#define QUOTECACHE_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define NOTIFY_TABLE_MAX 63 /* PostgreSQL's NAMEDATALEN - 1 */
#define NOTIFY_TXID_MAX 20  /* digits of a 64-bit txid */

typedef struct notify_msg {
    char table[NOTIFY_TABLE_MAX + 1];
    /* The transaction that made the change, so the fleet bumps once per
     * (transaction, product); "" when the payload names none. */
    char txid[NOTIFY_TXID_MAX + 1];
    int64_t product_id; /* > 0, or 0 for every product ("*") */
    /* The change is to data the in-process catalog holds (promotions,
     * tiers, fx_rates): entries may only be dropped once the catalog has
     * reloaded, or a reload would bring the old data back. */
    bool in_catalog;
} notify_msg;

/* Parses payload (NUL-terminated). Returns 0 and fills *out, or -1 when the
 * payload is not in the grammar above (out is then untouched). */
int notify_parse(const char *payload, notify_msg *out);

#endif
