-- The event log: the single source of truth every projection is folded from.
CREATE TABLE events (
    position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- The appending transaction's id. Readers order by (txid, position) and read only below the
    -- oldest running transaction, so an event committed late by a slow transaction is never
    -- skipped (design invariant 6).
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    type text NOT NULL,
    schema_version smallint NOT NULL,
    tenant_id uuid,
    idempotency_key text NOT NULL,
    -- json, not jsonb: the log is written far more than it is queried, and json stores the
    -- text as given (cheaper to append, no re-serialisation on read).
    data json NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_idempotency_key_key UNIQUE (idempotency_key)
);
CREATE INDEX events_txid_position_idx ON events (txid, position);
CREATE INDEX events_tenant_idx ON events (tenant_id, txid, position) WHERE tenant_id IS NOT NULL;

-- One row per consumer (or consumer shard): the last event it applied, committed in the same
-- transaction as its projection writes.
CREATE TABLE consumer_checkpoints (
    consumer text PRIMARY KEY,
    txid xid8 NOT NULL DEFAULT '0',
    position bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
