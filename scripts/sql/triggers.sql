-- quotecache change notifications.
--
-- Makes PostgreSQL announce every committed change to the pricing tables of
-- legacy-backend.md on the channel "quotecache", so that every quotecache
-- instance drops what the change makes stale within a second, whoever made
-- the change (the application, a batch job, someone in psql).
--
-- Payload: "<table>:<txid>:<product id>" for products, regional_prices,
-- tier_discounts and volume_breaks (the transaction, so that the whole fleet
-- bumps a product's generation once per transaction, not once per worker),
-- and "<table>:*" for a TRUNCATE (every quote). An UPDATE that moves a row
-- to another product announces both. PostgreSQL delivers notifications
-- only on commit, and folds identical payloads within one transaction.
--
-- fx_rates, tiers and promotions announce the scope of the change, so that
-- only the quotes it can change reload (src/notify.h has the grammar):
--   "fx:<txid>:<currency>:*"                    a rate changed or went
--   "tier:<txid>:<tier>:*"                      a tier was renamed or removed
--   "promo:<txid>:<id>:<region|*>:<product|*>"  a promotion changed or went
--   "catalog:<txid>:<table>:*"                  a new row: no cached quote
--                                               carries it (catalog reload)
-- Each ends in "*" or a product id: a quotecache older than these payloads
-- reads what follows the last ':' and drops that product or everything.
-- Installing this file over the older triggers upgrades them.
--
-- Idempotent: run it again at any time (`quotecache --install-triggers
-- --postgres CONNINFO`, or `psql -f scripts/sql/triggers.sql`).

SET client_min_messages = warning;

BEGIN;

CREATE OR REPLACE FUNCTION quotecache_notify_row() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    col text := TG_ARGV[0]; -- the column naming the product; NULL: every product
    -- 'txid': name the transaction (see the payload above)
    head text := TG_TABLE_NAME || CASE WHEN TG_ARGV[1] = 'txid'
                                       THEN ':' || txid_current() ELSE '' END;
    old_id text;
    new_id text;
BEGIN
    IF col IS NULL THEN
        PERFORM pg_notify('quotecache', head || ':*');
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_id := to_jsonb(OLD) ->> col;
        PERFORM pg_notify('quotecache', head || ':' || coalesce(old_id, '*'));
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_id := to_jsonb(NEW) ->> col;
        IF TG_OP = 'INSERT' OR new_id IS DISTINCT FROM old_id THEN
            PERFORM pg_notify('quotecache', head || ':' || coalesce(new_id, '*'));
        END IF;
    END IF;
    RETURN NULL;
END $$;

-- The scope of a row of fx_rates, tiers (TG_ARGV[1]: the naming column) or
-- promotions, as the payload announces it (without "<kind>:<txid>:").
CREATE OR REPLACE FUNCTION quotecache_scope_of(kind text, col text, r jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN kind = 'promo'
                THEN (r ->> 'id') || ':' || coalesce(r ->> 'region', '*') || ':' ||
                     coalesce(r ->> 'product_id', '*')
                ELSE coalesce(r ->> col, '*') || ':*' END
$$;

CREATE OR REPLACE FUNCTION quotecache_notify_scoped() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kind text := TG_ARGV[0]; -- 'fx', 'tier' or 'promo'
    col text := TG_ARGV[1];  -- the column naming the scope (fx, tier)
    txid text := txid_current()::text;
    old_scope text;
    new_scope text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('quotecache', 'catalog:' || txid || ':' || TG_TABLE_NAME || ':*');
        RETURN NULL;
    END IF;
    old_scope := quotecache_scope_of(kind, col, to_jsonb(OLD));
    PERFORM pg_notify('quotecache', kind || ':' || txid || ':' || old_scope);
    IF TG_OP = 'UPDATE' THEN
        new_scope := quotecache_scope_of(kind, col, to_jsonb(NEW));
        IF new_scope IS DISTINCT FROM old_scope THEN
            PERFORM pg_notify('quotecache', kind || ':' || txid || ':' || new_scope);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION quotecache_notify_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('quotecache', TG_TABLE_NAME || ':*');
    RETURN NULL;
END $$;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT * FROM (VALUES
        ('products', 'id', 'txid'),
        ('regional_prices', 'product_id', 'txid'),
        ('tier_discounts', 'product_id', 'txid'),
        ('volume_breaks', 'product_id', 'txid'),
        ('promotions', 'id', 'promo'),
        ('fx_rates', 'currency', 'fx'),
        ('tiers', 'name', 'tier')) AS v(tab, col, tag)
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS quotecache_notify ON %I', t.tab);
        EXECUTE format('DROP TRIGGER IF EXISTS quotecache_notify_truncate ON %I', t.tab);
        IF t.tag <> 'txid' THEN
            EXECUTE format('CREATE TRIGGER quotecache_notify AFTER INSERT OR UPDATE OR DELETE'
                           ' ON %I FOR EACH ROW EXECUTE FUNCTION quotecache_notify_scoped(%L, %L)',
                           t.tab, t.tag, t.col);
        ELSIF t.col IS NULL THEN
            EXECUTE format('CREATE TRIGGER quotecache_notify AFTER INSERT OR UPDATE OR DELETE'
                           ' ON %I FOR EACH ROW EXECUTE FUNCTION quotecache_notify_row()', t.tab);
        ELSIF t.tag IS NULL THEN
            EXECUTE format('CREATE TRIGGER quotecache_notify AFTER INSERT OR UPDATE OR DELETE'
                           ' ON %I FOR EACH ROW EXECUTE FUNCTION quotecache_notify_row(%L)',
                           t.tab, t.col);
        ELSE
            EXECUTE format('CREATE TRIGGER quotecache_notify AFTER INSERT OR UPDATE OR DELETE'
                           ' ON %I FOR EACH ROW EXECUTE FUNCTION quotecache_notify_row(%L, %L)',
                           t.tab, t.col, t.tag);
        END IF;
        EXECUTE format('CREATE TRIGGER quotecache_notify_truncate AFTER TRUNCATE'
                       ' ON %I FOR EACH STATEMENT EXECUTE FUNCTION quotecache_notify_truncate()',
                       t.tab);
    END LOOP;
END $$;

COMMIT;
