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
-- Idempotent: run it again at any time (`quotecache --install-triggers
-- --postgres CONNINFO`, or `psql -f scripts/sql/triggers.sql`).

SET client_min_messages = warning;

BEGIN;

CREATE OR REPLACE FUNCTION quotecache_notify_row() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    col text := TG_ARGV[0]; -- the column naming the product; NULL: every product
    old_id text;
    new_id text;
BEGIN
    IF col IS NULL THEN
        PERFORM pg_notify('quotecache', TG_TABLE_NAME || ':*');
        RETURN NULL;
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_id := to_jsonb(OLD) ->> col;
        PERFORM pg_notify('quotecache', TG_TABLE_NAME || ':' || coalesce(old_id, '*'));
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_id := to_jsonb(NEW) ->> col;
        IF TG_OP = 'INSERT' OR new_id IS DISTINCT FROM old_id THEN
            PERFORM pg_notify('quotecache', TG_TABLE_NAME || ':' || coalesce(new_id, '*'));
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
        ('products', 'id'),
        ('regional_prices', 'product_id'),
        ('tier_discounts', 'product_id'),
        ('volume_breaks', 'product_id'),
        ('promotions', 'product_id'),
        ('fx_rates', NULL),
        ('tiers', NULL)) AS v(tab, col)
    LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS quotecache_notify ON %I', t.tab);
        EXECUTE format('DROP TRIGGER IF EXISTS quotecache_notify_truncate ON %I', t.tab);
        IF t.col IS NULL THEN
            EXECUTE format('CREATE TRIGGER quotecache_notify AFTER INSERT OR UPDATE OR DELETE'
                           ' ON %I FOR EACH ROW EXECUTE FUNCTION quotecache_notify_row()', t.tab);
        ELSE
            EXECUTE format('CREATE TRIGGER quotecache_notify AFTER INSERT OR UPDATE OR DELETE'
                           ' ON %I FOR EACH ROW EXECUTE FUNCTION quotecache_notify_row(%L)',
                           t.tab, t.col);
        END IF;
        EXECUTE format('CREATE TRIGGER quotecache_notify_truncate AFTER TRUNCATE'
                       ' ON %I FOR EACH STATEMENT EXECUTE FUNCTION quotecache_notify_truncate()',
                       t.tab);
    END LOOP;
END $$;

COMMIT;
