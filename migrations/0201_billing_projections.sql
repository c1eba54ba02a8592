-- Money projections folded from the log by the billing fold (services/billing/fold). Each is
-- written only by the fold, in the same transaction as the fold's shard checkpoint, and can be
-- rebuilt from the log (`tally replay --verify`). Amounts are nano-credits.

-- The balance row doubles as the tenant's running statement. Conservation (design invariant 2):
--   balance = granted + purchased + adjusted - refunded - expired - charged - frozen - dispute_lost
-- and, inside the fold, balance = sum(open lot remaining) - debt - pending claims.
ALTER TABLE balances
    ADD COLUMN granted_nano bigint NOT NULL DEFAULT 0,
    ADD COLUMN purchased_nano bigint NOT NULL DEFAULT 0,
    -- Net of operator adjustments (positive and negative).
    ADD COLUMN adjusted_nano bigint NOT NULL DEFAULT 0,
    ADD COLUMN refunded_nano bigint NOT NULL DEFAULT 0,
    -- Unused grant credits removed at expiry.
    ADD COLUMN expired_nano bigint NOT NULL DEFAULT 0,
    -- Usage charges as the fold recomputed them.
    ADD COLUMN charged_nano bigint NOT NULL DEFAULT 0,
    -- Credits currently held back by open payment disputes.
    ADD COLUMN frozen_nano bigint NOT NULL DEFAULT 0,
    ADD COLUMN dispute_lost_nano bigint NOT NULL DEFAULT 0,
    -- Debits no credit lot could cover (the bounded overdraft), split by origin so that a later
    -- purchase repaying usage debt counts as paid usage.
    ADD COLUMN debt_usage_nano bigint NOT NULL DEFAULT 0,
    ADD COLUMN debt_other_nano bigint NOT NULL DEFAULT 0,
    -- Refunds and disputes that arrived before their purchase, and open disputes.
    ADD COLUMN claims jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN last_position bigint NOT NULL DEFAULT 0;
-- The fold rewrites every touched balance each batch; free room on the page lets Postgres
-- update in place (HOT) instead of adding index entries.
ALTER TABLE balances SET (fillfactor = 80);

-- Credits by origin, so paid and promotional credits stay apart. Debits consume promotional
-- lots before paid ones, the earliest expiry first.
CREATE TABLE credit_lots (
    tenant_id uuid NOT NULL,
    -- "grant:<grant_id>", "purchase:<purchase_id>", "adjustment:<adjustment_id>", "dispute:<id>"
    lot_id text NOT NULL,
    source text NOT NULL
        CHECK (source IN ('starter', 'promotional', 'manual', 'adjustment', 'purchase', 'dispute')),
    funding text NOT NULL CHECK (funding IN ('paid', 'promotional')),
    -- The grant id, purchase id, adjustment id or dispute id the lot came from.
    reference text NOT NULL,
    amount_nano bigint NOT NULL,
    remaining_nano bigint NOT NULL,
    frozen_nano bigint NOT NULL DEFAULT 0,
    expires_at timestamptz,
    opened_position bigint NOT NULL,
    opened_at timestamptz NOT NULL,
    expired_position bigint,
    expired_nano bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, lot_id)
) WITH (fillfactor = 80);
-- The fold finds a tenant's lots by the primary key. No index mentions remaining_nano, so the
-- fold's updates of it stay HOT. The expiry job finds grants that are due.
CREATE INDEX credit_lots_due_idx ON credit_lots (expires_at)
    WHERE expires_at IS NOT NULL AND expired_position IS NULL;

-- One line per balance change, in the words a customer reads on a statement.
CREATE TABLE ledger_entries (
    tenant_id uuid NOT NULL,
    -- The log position of the event that changed the balance (one event, at most one line).
    position bigint NOT NULL,
    kind text NOT NULL CHECK (kind IN ('usage', 'grant', 'purchase', 'refund', 'expiry',
                                       'adjustment', 'dispute_frozen', 'dispute_restored',
                                       'dispute_lost')),
    amount_nano bigint NOT NULL,
    balance_after_nano bigint NOT NULL,
    description text NOT NULL,
    occurred_at timestamptz NOT NULL,
    -- request id, grant id, purchase id, refund id, dispute id or adjustment id
    reference text NOT NULL,
    key_id uuid,
    model text,
    -- For debits: how much came from paid lots, from promotional lots, and from neither (debt).
    paid_nano bigint NOT NULL DEFAULT 0,
    promo_nano bigint NOT NULL DEFAULT 0,
    unfunded_nano bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, position)
);

-- Usage per tenant x key x model x hour (UTC), for analytics and the operator overview.
CREATE TABLE usage_rollups (
    tenant_id uuid NOT NULL,
    key_id uuid NOT NULL,
    model text NOT NULL,
    hour timestamptz NOT NULL,
    requests bigint NOT NULL DEFAULT 0,
    errors bigint NOT NULL DEFAULT 0,
    input_tokens bigint NOT NULL DEFAULT 0,
    cached_input_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    reasoning_tokens bigint NOT NULL DEFAULT 0,
    images bigint NOT NULL DEFAULT 0,
    base_nano bigint NOT NULL DEFAULT 0,
    charge_nano bigint NOT NULL DEFAULT 0,
    margin_nano bigint NOT NULL DEFAULT 0,
    paid_nano bigint NOT NULL DEFAULT 0,
    promo_nano bigint NOT NULL DEFAULT 0,
    unfunded_nano bigint NOT NULL DEFAULT 0,
    mismatches bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, key_id, model, hour)
) WITH (fillfactor = 80);
-- The operators' overview reads a period across tenants. Rows arrive roughly in time order, so
-- a BRIN index serves it at almost no cost to the fold's writes.
CREATE INDEX usage_rollups_hour_idx ON usage_rollups USING brin (hour);

-- Credits leaving lots other than by usage paid at once (that is in usage_rollups.paid_nano /
-- promo_nano and on each usage ledger line), per tenant x UTC day x funding x reason:
--   usage_debt  credits that repaid usage no credits covered when it happened (deferred usage)
--   refund, adjustment, dispute (lost), expiry (unused grants removed), debt (other debt repaid)
-- Recognized revenue (paid credits consumed by usage) for a period =
--   sum(usage_rollups.paid_nano) + sum(amount_nano) here WHERE funding = 'paid' AND reason = 'usage_debt'.
CREATE TABLE credit_consumption_daily (
    tenant_id uuid NOT NULL,
    day date NOT NULL,
    funding text NOT NULL CHECK (funding IN ('paid', 'promotional')),
    reason text NOT NULL,
    amount_nano bigint NOT NULL,
    PRIMARY KEY (tenant_id, day, funding, reason)
);

-- Usage whose recorded charge differs from the fold's recomputation (design invariant 1).
-- The ledger uses the recomputed amount.
CREATE TABLE pricing_mismatches (
    position bigint PRIMARY KEY,
    tenant_id uuid NOT NULL,
    request_id text NOT NULL,
    model text NOT NULL,
    price_version bigint NOT NULL,
    -- charge: charges differ; base: only base costs differ; unpriced: no price at that version
    -- and time; unpriceable: the sheet cannot price the usage (e.g. an unknown image size).
    reason text NOT NULL,
    recorded_charge_nano bigint NOT NULL,
    recomputed_charge_nano bigint,
    recorded_base_nano bigint NOT NULL,
    recomputed_base_nano bigint,
    charged_nano bigint NOT NULL,
    occurred_at timestamptz NOT NULL
);
CREATE INDEX pricing_mismatches_tenant_idx ON pricing_mismatches (tenant_id, position);

-- The shard count the fold checkpoints were written with. Changing TALLY_FOLD_SHARDS renames
-- the consumers; folding under new names would apply every event again, so the fold refuses.
CREATE TABLE fold_layout (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    shard_count integer NOT NULL CHECK (shard_count > 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Low-balance alerts: one per tenant. `armed` is false after an alert fired, until the balance
-- is back at or above the threshold, so each crossing sends exactly one webhook.
CREATE TABLE low_balance_alerts (
    tenant_id uuid PRIMARY KEY,
    threshold_nano bigint NOT NULL CHECK (threshold_nano >= 0),
    url text NOT NULL,
    -- The HMAC signing secret, sealed with AES-256-GCM under TALLY_SECRET_KEY.
    secret_key_id text NOT NULL,
    secret_ciphertext bytea NOT NULL,
    armed boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL,
    kind text NOT NULL CHECK (kind IN ('low_balance')),
    -- The log position whose fold triggered it: a re-run fold cannot create it twice.
    position bigint NOT NULL,
    url text NOT NULL,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts integer NOT NULL DEFAULT 0,
    last_status integer,
    last_error text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    UNIQUE (tenant_id, kind, position)
);
CREATE INDEX notifications_tenant_idx ON notifications (tenant_id, created_at DESC);
CREATE INDEX notifications_due_idx ON notifications (next_attempt_at) WHERE status = 'pending';

-- Differences the reconcile job found between Redis live balances and Postgres, and whether
-- it repaired them.
CREATE TABLE live_balance_drift (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id uuid NOT NULL,
    -- missing (Redis had no entry), behind (fold not applied), balance, unfolded, stale_unfolded
    kind text NOT NULL,
    redis_seq bigint,
    pg_seq bigint NOT NULL,
    redis_balance_nano bigint,
    pg_balance_nano bigint NOT NULL,
    detail jsonb NOT NULL DEFAULT '{}'::jsonb,
    repaired boolean NOT NULL,
    detected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX live_balance_drift_tenant_idx ON live_balance_drift (tenant_id, detected_at);
