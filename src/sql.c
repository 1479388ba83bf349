/* sql: the statements, in one place, so what quotecache asks of the
 * database can be read (and reviewed for cost) at a glance. */
#include "quotecache/sql.h"

/* The quote of legacy-backend.md in one round trip. The promotions applied
 * are the ones the caller found active (they are part of the cache key), so
 * the stored quote always matches its key; the discount is read fresh. The
 * tier and the currency are checked in the same snapshot: a load that runs
 * after a tier or currency is deleted, before this worker's catalog has
 * reloaded (a scoped bump does not wait for it), answers 400, never a
 * price of a state that never existed (no tier row, no discount). All
 * arithmetic is numeric, and round(numeric) rounds half away from zero, as
 * the spec requires. */
static const char quote_sql[] =
    "WITH p AS ("
    " SELECT rp.list_price_cents AS list,"
    "  COALESCE((SELECT td.discount_bp FROM tier_discounts td"
    "            WHERE td.product_id = $1::bigint AND td.tier = $3), 0) AS tier_bp,"
    "  COALESCE((SELECT max(pr.discount_bp) FROM promotions pr"
    "            WHERE pr.id = ANY($5::bigint[])), 0) AS promo_bp,"
    "  (SELECT array_agg(pr.id ORDER BY pr.id) FROM promotions pr"
    "    WHERE pr.id = ANY($5::bigint[])) AS promo_ids,"
    "  (SELECT fx.usd_rate FROM fx_rates fx WHERE fx.currency = $4) AS rate,"
    "  EXISTS (SELECT 1 FROM tiers t WHERE t.name = $3) AS tier_ok"
    " FROM products pd"
    " JOIN regional_prices rp ON rp.product_id = pd.id AND rp.region = $2"
    " WHERE pd.id = $1::bigint AND pd.active),"
    "u AS ("
    " SELECT round(round(list::numeric * (10000 - tier_bp) * (10000 - promo_bp)"
    "        / 100000000) * rate) AS unit, promo_ids, tier_ok FROM p)"
    "SELECT u.unit::bigint, COALESCE(u.promo_ids, '{}')::text, vb.min_qty,"
    " lead(vb.min_qty) OVER (ORDER BY vb.min_qty) - 1,"
    " round(u.unit * (10000 - vb.discount_bp) / 10000.0)::bigint, u.tier_ok"
    " FROM u LEFT JOIN volume_breaks vb ON vb.product_id = $1::bigint"
    " ORDER BY vb.min_qty";

/* Everything validation and keys need, in one consistent snapshot.
 * Promotions that ended more than a minute ago cannot matter any more. */
static const char catalog_sql[] =
    "SELECT 't', name, NULL::bigint, NULL::bigint, NULL::text, NULL::bigint, NULL::bigint"
    " FROM tiers "
    "UNION ALL SELECT 'c', currency, NULL, NULL, NULL, NULL, NULL FROM fx_rates "
    "UNION ALL SELECT 'r', region, NULL, NULL, NULL, NULL, NULL"
    " FROM (SELECT DISTINCT region FROM regional_prices) rg "
    "UNION ALL SELECT 'p', NULL, id, product_id, region,"
    " (LEAST(GREATEST(COALESCE(extract(epoch FROM starts_at), -1e12), -1e12), 1e12)"
    "  * 1000)::bigint,"
    " (LEAST(GREATEST(COALESCE(extract(epoch FROM ends_at), 1e12), -1e12), 1e12)"
    "  * 1000)::bigint"
    " FROM promotions WHERE ends_at IS NULL OR ends_at > now() - interval '1 minute'";

const pgpool_stmt sql_statements[SQL_COUNT] = {
    [SQL_QUOTE] = {"qc_quote", quote_sql, 5},
    [SQL_CATALOG] = {"qc_catalog", catalog_sql, 0},
    [SQL_NOTIFY] = {"qc_notify", "SELECT pg_notify('quotecache', $1)", 1},
};
