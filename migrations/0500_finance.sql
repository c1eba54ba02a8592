-- Finance: invoices and credit notes (immutable, gap-free numbers per issuer and series), the
-- statements of closed periods, and the periods' close records.

-- One row per (issuer, series): the next number to hand out. It is locked and advanced in the
-- same transaction that inserts the document, so a rolled-back issue gives its number back and
-- numbers are gap-free; a sequence could not promise that (nextval is never rolled back).
CREATE TABLE finance_number_counters (
    issuer text NOT NULL,
    series text NOT NULL,
    next_number bigint NOT NULL DEFAULT 1 CHECK (next_number >= 1),
    PRIMARY KEY (issuer, series)
);

CREATE TABLE finance_documents (
    id uuid PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('invoice', 'credit_note')),
    issuer text NOT NULL,
    series text NOT NULL,
    number bigint NOT NULL,
    document_number text NOT NULL,
    tenant_id uuid NOT NULL,
    -- The purchase (invoice) or refund (credit note) the document was issued for: one each.
    source_id text NOT NULL,
    source_position bigint NOT NULL,
    -- A credit note's invoice.
    references_id uuid REFERENCES finance_documents (id),
    -- The accounting month (YYYY-MM, finance time zone) of the issue date.
    period text NOT NULL,
    issue_date date NOT NULL,
    supply_date date NOT NULL,
    currency text NOT NULL,
    net_minor bigint NOT NULL,
    tax_minor bigint NOT NULL,
    gross_minor bigint NOT NULL,
    -- The whole document as issued (parties, lines, totals): what every format renders.
    body jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer, series, number),
    UNIQUE (kind, source_id),
    CHECK (net_minor + tax_minor = gross_minor)
);
CREATE INDEX finance_documents_period_idx ON finance_documents (period, tenant_id, issuer, series, number);
CREATE INDEX finance_documents_tenant_idx ON finance_documents (tenant_id, period);

CREATE TABLE finance_periods (
    period text PRIMARY KEY CHECK (period ~ '^\d{4}-(0[1-9]|1[0-2])$'),
    timezone text NOT NULL,
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL,
    statements integer NOT NULL,
    closed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE finance_statements (
    tenant_id uuid NOT NULL,
    period text NOT NULL REFERENCES finance_periods (period),
    opening_balance_nano bigint NOT NULL,
    closing_balance_nano bigint NOT NULL,
    -- The statement as issued, and the credit lots at period end: the next period opens from it.
    body jsonb NOT NULL,
    closing_state jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, period)
);
CREATE INDEX finance_statements_period_idx ON finance_statements (period, tenant_id);

-- Issued documents, closed periods and their statements are never edited or deleted: a
-- correction is a new document. The database refuses, whatever code tries.
CREATE FUNCTION finance_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is immutable: issue a correcting document instead', TG_TABLE_NAME
        USING ERRCODE = 'raise_exception';
END $$;
CREATE TRIGGER finance_documents_immutable BEFORE UPDATE OR DELETE ON finance_documents
    FOR EACH ROW EXECUTE FUNCTION finance_refuse_change();
CREATE TRIGGER finance_periods_immutable BEFORE UPDATE OR DELETE ON finance_periods
    FOR EACH ROW EXECUTE FUNCTION finance_refuse_change();
CREATE TRIGGER finance_statements_immutable BEFORE UPDATE OR DELETE ON finance_statements
    FOR EACH ROW EXECUTE FUNCTION finance_refuse_change();

-- Reading a tenant's money events of a month: the partial index skips usage events, so the
-- gateway's hot-path appends (nearly all UsageRecorded) do not pay for it.
CREATE INDEX events_finance_money_idx ON events (tenant_id, recorded_at)
    WHERE type <> 'UsageRecorded';
-- Month ranges over the whole log (statements of every tenant, the reconciliation): a BRIN
-- index costs almost nothing to maintain, since recorded_at grows with the table.
CREATE INDEX events_recorded_brin ON events USING brin (recorded_at);
