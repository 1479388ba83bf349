/* notify: parses the payload of a change notification on the "quotecache"
 * channel. Pure code.
 *
 * Grammar (scripts/sql/triggers.sql and invalidate_purge):
 *   payload    = head ":" ( product-id / "*" )
 *   head       = table ":" txid / table
 *   txid       = 1*20 DIGIT          (the writing transaction, txid_current())
 *   product-id = 1*DIGIT, 1 .. INT64_MAX (no sign, no spaces)
 * The product after the last ':' is what counts; "*" means every product.
 * A head that is not `table ":" txid` is all table, whatever it holds, so a
 * payload from an older trigger or a stray NOTIFY that names a product
 * still invalidates it: a cache may drop too much, never too little.
 *
 * The triggers of issue 14 also send scoped payloads (scope.h), each ending
 * in ":*" or ":<product-id>" so that an older quotecache still drops enough:
 *   scoped  = "fx" ":" txid ":" currency ":*"       (an fx_rates row changed)
 *           / "tier" ":" txid ":" tier ":*"         (a tiers row changed)
 *           / "promo" ":" txid ":" promo-id ":" ( region / "*" ) ":"
 *             ( product-id / "*" )                  (a promotion changed)
 *           / "catalog" ":" txid ":" table ":*"     (a new tiers, fx_rates or
 *                                                    promotions row)
 * A scoped payload that does not parse (a bad name) reaches everything. */
#ifndef QUOTECACHE_NOTIFY_H
#define QUOTECACHE_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "quotecache/scope.h"

#define NOTIFY_TABLE_MAX 63 /* PostgreSQL's NAMEDATALEN - 1 */
#define NOTIFY_TXID_MAX 20  /* digits of a 64-bit txid */

typedef struct notify_msg {
    /* The table, for logs: cut to NOTIFY_TABLE_MAX bytes (table_len has the
     * full length). */
    char table[NOTIFY_TABLE_MAX + 1];
    size_t table_len;
    /* The transaction that made the change, so the fleet bumps once per
     * (transaction, product); "" when the payload names none. */
    char txid[NOTIFY_TXID_MAX + 1];
    int64_t product_id; /* > 0, or 0 for every product ("*") */
    /* The change is to data the in-process catalog holds (promotions,
     * tiers, fx_rates): entries may only be dropped once the catalog has
     * reloaded, or a reload would bring the old data back. */
    bool in_catalog;
    /* What the change reaches (scoped payloads; older ones are all
     * NOTIFY_REACH_PRODUCT). */
    enum notify_reach {
        NOTIFY_REACH_PRODUCT, /* product_id's quotes (0: every quote) */
        NOTIFY_REACH_SCOPE,   /* the quotes in scope */
        NOTIFY_REACH_NONE,    /* none: a new row no cached quote can carry */
    } reach;
    scope scope;
    /* The catalog lists what changed (scoped payloads): reload it, without
     * holding the bumps back (in_catalog false): a quote reads its rate,
     * tier discount and promotion discounts from the database, and its key
     * names the promotion set, so no bump depends on the catalog's copy. */
    bool reload_catalog;
} notify_msg;

/* Parses payload (NUL-terminated). Returns 0 and fills *out, or -1 when it
 * names no product (no ':', or not a product id or "*" after the last one;
 * out is then untouched). */
int notify_parse(const char *payload, notify_msg *out);

#endif
