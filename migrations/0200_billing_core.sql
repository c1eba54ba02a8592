-- Folded balance per tenant: written only by the billing fold, in the same transaction as its
-- checkpoint. folded_events counts the tenant's events folded so far (the live balance's seq).
CREATE TABLE balances (
    tenant_id uuid PRIMARY KEY,
    balance_nano bigint NOT NULL DEFAULT 0,
    folded_events bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The price book. Every change takes the next number of one global version sequence, so a
-- usage event naming version N can be priced again later with everything in force at N.
CREATE SEQUENCE price_book_version_seq;

CREATE TABLE model_prices (
    model text NOT NULL,
    price_version bigint NOT NULL,
    -- A tally.pricing.ModelPrice as JSON (decimal strings).
    price jsonb NOT NULL,
    -- NULL: the model uses the default margin.
    margin_pct numeric,
    effective_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, price_version)
);

CREATE TABLE default_margins (
    price_version bigint PRIMARY KEY,
    margin_pct numeric NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_prices (
    price_version bigint PRIMARY KEY,
    credit_price_usd numeric NOT NULL CHECK (credit_price_usd > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenant_margins (
    tenant_id uuid NOT NULL,
    price_version bigint NOT NULL,
    -- NULL removes the override from this version on.
    margin_pct numeric,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, price_version)
);
