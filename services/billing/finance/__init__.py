"""Finance: invoices, credit notes, statements, the period close and the reconciliation report.

Everything here is derived from the event log (the source of truth) and the tenants table;
documents, once issued, and closed periods are immutable.
"""
