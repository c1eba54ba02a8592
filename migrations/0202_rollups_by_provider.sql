-- Usage rollups keep the provider that served the usage: finance reports the base cost owed to
-- each provider, and a model may be served by several (routes, failover). Rows folded before
-- this migration carry provider '' until `tally replay` rebuilds the projections from the log.
ALTER TABLE usage_rollups ADD COLUMN provider text NOT NULL DEFAULT '';
ALTER TABLE usage_rollups DROP CONSTRAINT usage_rollups_pkey;
ALTER TABLE usage_rollups ADD PRIMARY KEY (tenant_id, key_id, model, provider, hour);
