-- quotecache change notifications.
--
-- Makes PostgreSQL announce every committed change to the pricing tables of
-- legacy-backend.md on the channel "quotecache", so that every quotecache
-- instance drops what the change makes stale within a second, whoever made
-- the change (the application, a batch job, someone in psql).
--
-- Payload: "<table>:<product id>" when the change concerns one product, or
-- "<table>:*" when it may concern every product (fx rates, tiers, a promotion
-- for all products, TRUNCATE). An UPDATE that moves a row to another product
-- announces both. PostgreSQL delivers notifications only on commit, and
-- folds identical payloads within one transaction into one.
--
-- products, regional_prices, tier_discounts and volume_breaks also name the
-- transaction, "<table>:<txid>:<product id>", so that the whole fleet bumps
-- a product's generation once per transaction, not once per worker. Older
-- quotecaches read the product after the last ':' and still get it right.
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
        ('promotions', 'product_id', NULL),
        ('fx_rates', NULL, NULL),
        ('tiers', NULL, NULL)) AS v(tab, col, tag)
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS quotecache_notify ON %I', t.tab);
        EXECUTE format('DROP TRIGGER IF EXISTS quotecache_notify_truncate ON %I', t.tab);
        IF t.col IS NULL THEN
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
