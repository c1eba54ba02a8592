-- Payments: credit packs, Stripe customers, orders (checkout sessions and auto top-ups), the
-- Stripe webhook inbox, refunds and disputes applied, notifications, auto top-up settings and
-- reconciliation reports. Money moves only through events (CreditsPurchased, CreditsRefunded,
-- CreditsFrozen, CreditsUnfrozen); these tables record what was asked of Stripe and what of it
-- has been turned into events, so every Stripe fact is applied exactly once.

CREATE TABLE credit_packs (
    id uuid PRIMARY KEY,
    name text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    credits bigint NOT NULL CHECK (credits > 0),
    -- In the currency's smallest unit (cents for USD), as Stripe takes it.
    price_minor bigint NOT NULL CHECK (price_minor > 0),
    currency text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    archived_at timestamptz
);
CREATE UNIQUE INDEX credit_packs_active_name_key ON credit_packs (lower(name)) WHERE active;

-- One Stripe customer per tenant, created on the first purchase and reused for every later one.
-- The row is inserted first (ON CONFLICT DO NOTHING), then filled once; see repository.py.
CREATE TABLE stripe_customers (
    tenant_id uuid PRIMARY KEY REFERENCES tenants (id),
    customer_id text UNIQUE,
    -- The card saved by a checkout with setup_future_usage=off_session, for auto top-ups.
    payment_method text,
    payment_method_kind text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per attempt to take money: a Checkout Session or an off-session PaymentIntent.
-- Its id is the purchase id of the events and the root of every Stripe idempotency key.
CREATE TABLE payment_orders (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id),
    source text NOT NULL CHECK (source IN ('checkout', 'auto_topup')),
    -- creating: row written, Stripe not answered yet; open: session waiting for the customer;
    -- processing: paid with a delayed method, or a top-up whose outcome is not known yet.
    status text NOT NULL CHECK (status IN ('creating', 'open', 'processing', 'paid', 'failed',
                                           'expired', 'error')),
    pack_id uuid REFERENCES credit_packs (id),
    credits bigint NOT NULL CHECK (credits > 0),
    amount_nano bigint NOT NULL CHECK (amount_nano > 0),
    price_minor bigint NOT NULL CHECK (price_minor > 0),
    currency text NOT NULL,
    save_payment_method boolean NOT NULL DEFAULT false,
    stripe_customer text,
    -- The saved card an auto top-up charges (kept so a retry sends the very same request).
    payment_method text,
    stripe_session_id text UNIQUE,
    stripe_payment_intent text UNIQUE,
    stripe_charge text,
    checkout_url text,
    expires_at timestamptz,
    -- Filled when CreditsPurchased is appended (in the same transaction).
    paid_minor bigint,
    credited_at timestamptz,
    -- Running totals of the refunds applied: each refund's credits are the difference of the
    -- rounded cumulative shares, so several partial refunds add up to exactly the purchase.
    refunded_minor bigint NOT NULL DEFAULT 0,
    refunded_nano bigint NOT NULL DEFAULT 0,
    failure_code text,
    failure_message text,
    actor jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_orders_tenant_idx ON payment_orders (tenant_id, created_at DESC, id);
CREATE INDEX payment_orders_topup_idx ON payment_orders (tenant_id, created_at)
    WHERE source = 'auto_topup';

CREATE TABLE payment_refunds (
    refund_id text PRIMARY KEY,
    order_id uuid NOT NULL REFERENCES payment_orders (id),
    tenant_id uuid NOT NULL,
    amount_minor bigint NOT NULL,
    amount_nano bigint NOT NULL,
    currency text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_refunds_order_idx ON payment_refunds (order_id);

CREATE TABLE payment_disputes (
    dispute_id text PRIMARY KEY,
    order_id uuid NOT NULL REFERENCES payment_orders (id),
    tenant_id uuid NOT NULL,
    disputed_minor bigint NOT NULL,
    frozen_nano bigint NOT NULL,
    outcome text CHECK (outcome IN ('won', 'lost')),
    frozen_at timestamptz NOT NULL DEFAULT now(),
    closed_at timestamptz
);

-- The webhook inbox: each Stripe event stored once (its id is the key), processed by a job.
CREATE TABLE stripe_webhook_events (
    event_id text PRIMARY KEY,
    type text NOT NULL,
    livemode boolean NOT NULL DEFAULT false,
    api_version text,
    stripe_created timestamptz,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'processed', 'ignored', 'failed')),
    outcome text,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    received_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz
);
CREATE INDEX stripe_webhook_events_unfinished_idx ON stripe_webhook_events (received_at)
    WHERE status IN ('pending', 'failed');

-- Messages for the tenant (failed payments, auto top-up switched off). dedupe_key makes a
-- redelivered event notify once.
CREATE TABLE payment_notifications (
    id uuid PRIMARY KEY,
    tenant_id uuid NOT NULL REFERENCES tenants (id),
    kind text NOT NULL,
    message text NOT NULL,
    data jsonb NOT NULL DEFAULT '{}'::jsonb,
    dedupe_key text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_notifications_tenant_idx ON payment_notifications (tenant_id, created_at DESC);

CREATE TABLE auto_topup_settings (
    tenant_id uuid PRIMARY KEY REFERENCES tenants (id),
    enabled boolean NOT NULL,
    threshold_nano bigint NOT NULL CHECK (threshold_nano > 0),
    pack_id uuid NOT NULL REFERENCES credit_packs (id),
    disabled_reason text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reconciliation_runs (
    id uuid PRIMARY KEY,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    status text NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    stripe_payments integer NOT NULL DEFAULT 0,
    stripe_refunds integer NOT NULL DEFAULT 0,
    mismatches integer NOT NULL DEFAULT 0,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CHECK (period_start < period_end)
);
CREATE INDEX reconciliation_runs_created_idx ON reconciliation_runs (created_at DESC, id);

CREATE TABLE reconciliation_mismatches (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES reconciliation_runs (id) ON DELETE CASCADE,
    kind text NOT NULL,
    tenant_id uuid,
    stripe_id text,
    purchase_id text,
    expected_minor bigint,
    actual_minor bigint,
    detail text NOT NULL
);
CREATE INDEX reconciliation_mismatches_run_idx ON reconciliation_mismatches (run_id, id);

-- Reconciliation looks purchases and refunds up by their Stripe ids.
CREATE INDEX events_purchase_payment_intent_idx ON events ((data->>'stripe_payment_intent'))
    WHERE type = 'CreditsPurchased';
CREATE INDEX events_refund_id_idx ON events ((data->>'refund_id'))
    WHERE type = 'CreditsRefunded';
