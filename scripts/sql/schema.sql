-- The legacy pricing schema of shared/spec/legacy-backend.md, for the
-- project's development copy of the backend. Idempotent: drops and
-- recreates every table (a dev copy owns no data worth keeping).

DROP TABLE IF EXISTS promotions, volume_breaks, tier_discounts,
    regional_prices, tiers, fx_rates, products CASCADE;

CREATE TABLE products (
    id     bigint  PRIMARY KEY,
    sku    text    NOT NULL UNIQUE,
    name   text    NOT NULL,
    active boolean NOT NULL DEFAULT true
);

CREATE TABLE tiers (
    name text PRIMARY KEY
);

CREATE TABLE regional_prices (
    product_id       bigint NOT NULL REFERENCES products (id),
    region           text   NOT NULL,
    list_price_cents bigint NOT NULL CHECK (list_price_cents > 0),
    PRIMARY KEY (product_id, region)
);

CREATE TABLE tier_discounts (
    product_id  bigint NOT NULL REFERENCES products (id),
    tier        text   NOT NULL REFERENCES tiers (name),
    discount_bp int    NOT NULL CHECK (discount_bp BETWEEN 0 AND 10000),
    PRIMARY KEY (product_id, tier)
);

CREATE TABLE volume_breaks (
    product_id  bigint NOT NULL REFERENCES products (id),
    min_qty     int    NOT NULL CHECK (min_qty >= 1),
    discount_bp int    NOT NULL CHECK (discount_bp BETWEEN 0 AND 10000),
    PRIMARY KEY (product_id, min_qty)
);

CREATE TABLE promotions (
    id          bigint      PRIMARY KEY,
    product_id  bigint      NULL,  -- NULL: every product
    region      text        NULL,  -- NULL: every region
    discount_bp int         NOT NULL CHECK (discount_bp BETWEEN 0 AND 10000),
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL  -- active while starts_at <= now() < ends_at
);

CREATE TABLE fx_rates (
    currency text          PRIMARY KEY,
    usd_rate numeric(18,8) NOT NULL CHECK (usd_rate > 0)
);
