-- Per-tenant rate limits the gateway enforces beside each key's own (NULL: the
-- TALLY_GATEWAY_TENANT_RPM / _TPM defaults). IF NOT EXISTS: the tenant service may add the
-- same columns from its side; either migration leaves one definition.
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS rpm_limit integer CHECK (rpm_limit > 0);
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS tpm_limit integer CHECK (tpm_limit > 0);
