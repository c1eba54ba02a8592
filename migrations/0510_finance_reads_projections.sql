-- Finance reads billing's projections instead of the log. A statement needs a tenant's money
-- lines of a period (and their sums before it): a partial index over the non-usage ledger
-- lines, so the fold's per-request usage lines (nearly all of them) do not pay for it.
CREATE INDEX ledger_entries_money_idx ON ledger_entries (tenant_id, occurred_at)
    WHERE kind <> 'usage';
-- The close checks the billing fold has applied the period; its shard checkpoints are the
-- consumer_checkpoints rows, found by the existing indexes.
