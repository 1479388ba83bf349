/* sql: every statement quotecache runs on the pricing database, prepared on
 * each pool connection and addressed by these indices. */
#ifndef QUOTECACHE_SQL_H
#define QUOTECACHE_SQL_H

#include <stddef.h>

#include "quotecache/pgpool.h"

enum sql_stmt {
    /* $1 product id, $2 region, $3 tier, $4 currency, $5 promo ids ('{1,2}').
     * One row per volume break (or one row with NULL min_qty when the
     * product has none); no row when the product is not quotable there.
     * Columns: unit_price_cents, promo_ids (text array), min_qty, max_qty,
     * volume unit_price_cents. unit_price_cents is NULL when the currency
     * has no rate. */
    SQL_QUOTE,
    /* Kinds 't' (tier name), 'c' (currency), 'p' (promotion: id, product_id
     * or NULL, region or NULL, starts and ends as ms since the epoch). */
    SQL_CATALOG,
    /* $1 payload: announces an admin purge on the "quotecache" channel. */
    SQL_NOTIFY,
    SQL_COUNT
};

extern const pgpool_stmt sql_statements[SQL_COUNT];

/* scripts/sql/triggers.sql, embedded at build time: makes PostgreSQL
 * announce committed changes to the pricing tables on channel "quotecache".
 * Idempotent. */
extern const char sql_install_triggers[];

#endif
