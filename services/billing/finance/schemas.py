"""The documents finance produces, as msgspec Structs: the JSON format is exactly these.

`json_schemas()` gives their JSON Schema (served at `/finance/schemas/{name}` and printed in
docs/finance.md). Money in credits is integer nano-credits (`*_nano`, 1 credit = 10^9); money
in a currency is integer minor units (`*_minor`, cents for EUR) with `currency_exponent`.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import msgspec

from billing.finance.config import Party

# A statement's money lines are the billing ledger's non-usage lines; a lost dispute is a
# `chargeback`. In the ledger a dispute holds its credits back at once (`dispute_frozen`, the
# balance drops) and gives them back if won (`dispute_restored`).
MoneyLineKind = Literal[
    "purchase",
    "grant",
    "refund",
    "expiry",
    "adjustment",
    "chargeback",
    "dispute_frozen",
    "dispute_restored",
]

DocumentKind = Literal["invoice", "credit_note"]
PeriodStatus = Literal["open", "closed"]


class DocumentReference(msgspec.Struct, frozen=True, kw_only=True):
    """The invoice a credit note corrects."""

    id: UUID
    document_number: str
    issue_date: date


class DocumentLine(msgspec.Struct, frozen=True, kw_only=True):
    """One line of an invoice or credit note; net + tax = gross, rounded once per line."""

    line: int
    description: str
    credits_nano: int
    net_minor: int
    tax_rate_pct: Decimal
    tax_minor: int
    gross_minor: int


class FinanceDocument(msgspec.Struct, frozen=True, kw_only=True):
    """An invoice (for a purchase) or a credit note (for a refund), as issued; never edited.

    Credit notes carry negative amounts, so a column sum over invoices and credit notes is the
    net amount invoiced.
    """

    id: UUID
    kind: DocumentKind
    document_number: str
    period: str
    issue_date: date
    supply_date: date
    tenant_id: UUID
    issuer: Party
    customer: Party
    currency: str
    currency_exponent: int
    lines: list[DocumentLine]
    net_minor: int
    tax_minor: int
    gross_minor: int
    tax_rate_pct: Decimal
    reverse_charge: bool
    notes: list[str]
    purchase_id: str
    refund_id: str | None = None
    references: DocumentReference | None = None
    payment_reference: str | None = None


class DocumentExport(msgspec.Struct, frozen=True, kw_only=True):
    """`tally invoice export --format json`: every document of a period (one tenant or all)."""

    period: str
    period_status: PeriodStatus
    tenant_id: UUID | None
    documents: list[FinanceDocument]


class StatementMoneyLine(msgspec.Struct, frozen=True, kw_only=True):
    """A purchase, grant, refund, expiry, adjustment or dispute line; amount is signed."""

    kind: MoneyLineKind
    date: date
    recorded_at: datetime
    reference: str
    description: str
    amount_nano: int


class StatementUsageLine(msgspec.Struct, frozen=True, kw_only=True):
    """The period's usage of one model: what it consumed and what it cost."""

    model: str
    requests: int
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    images: int
    base_cost_nano: int
    margin_nano: int
    credits_nano: int


class CreditPosition(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's credits at an instant, by kind: balance = paid + promotional - debt - frozen.

    `frozen` is what open disputes hold back (and claims waiting for their purchase): still in
    a lot or owed, but no longer in the balance.
    """

    balance_nano: int
    paid_nano: int
    promotional_nano: int
    debt_nano: int
    frozen_nano: int


class StatementTotals(msgspec.Struct, frozen=True, kw_only=True):
    purchases_nano: int
    grants_nano: int
    refunds_nano: int
    expiries_nano: int
    adjustments_nano: int
    chargebacks_nano: int
    usage_nano: int
    base_cost_nano: int
    margin_nano: int
    # Usage by the credits that paid for it.
    usage_paid_nano: int
    usage_promotional_nano: int
    usage_unfunded_nano: int
    debt_settled_paid_nano: int
    debt_settled_promotional_nano: int


class Statement(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's month: opening balance + every line = closing balance, to the nano-credit.

    `status` is `final` once the period is closed (the stored statement, never edited) and
    `provisional` while it is open.
    """

    tenant_id: UUID
    tenant_name: str
    period: str
    status: Literal["provisional", "final"]
    timezone: str
    starts_at: datetime
    ends_at: datetime
    opening_balance_nano: int
    closing_balance_nano: int
    money_lines: list[StatementMoneyLine]
    usage_lines: list[StatementUsageLine]
    totals: StatementTotals
    opening: CreditPosition
    closing: CreditPosition


class StatementExport(msgspec.Struct, frozen=True, kw_only=True):
    """`tally statement export --format json`: the statements of a period."""

    period: str
    period_status: PeriodStatus
    statements: list[Statement]


class ModelRevenue(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    requests: int
    credits_nano: int
    base_cost_nano: int
    margin_nano: int


class ProviderCost(msgspec.Struct, frozen=True, kw_only=True):
    """Base cost owed to one provider for the period (`""` when the usage named none)."""

    provider: str
    requests: int
    base_cost_nano: int


class TenantRevenue(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    tenant_name: str
    usage_nano: int
    base_cost_nano: int
    margin_nano: int
    recognized_revenue_nano: int
    promotional_usage_nano: int
    unfunded_usage_nano: int
    closing: CreditPosition


class CurrencyTotals(msgspec.Struct, frozen=True, kw_only=True):
    """Invoiced money in one currency (credit notes negative)."""

    currency: str
    invoices: int
    credit_notes: int
    net_minor: int
    tax_minor: int
    gross_minor: int


class ReconciliationCheck(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    ok: bool
    detail: str


class ReconciliationTotals(msgspec.Struct, frozen=True, kw_only=True):
    usage_nano: int
    base_cost_nano: int
    margin_nano: int
    recognized_revenue_nano: int
    promotional_usage_nano: int
    unfunded_usage_nano: int
    purchases_nano: int
    grants_nano: int
    refunds_nano: int
    expiries_nano: int
    adjustments_nano: int
    chargebacks_nano: int
    opening_balance_nano: int
    closing_balance_nano: int
    # Paid credits not yet consumed at period end: the platform's liability to its tenants.
    paid_outstanding_nano: int
    promotional_outstanding_nano: int
    debt_nano: int


class ReconciliationReport(msgspec.Struct, frozen=True, kw_only=True):
    """A period's revenue, costs, liability and invoicing, with checks against the log."""

    period: str
    period_status: PeriodStatus
    totals: ReconciliationTotals
    by_model: list[ModelRevenue]
    by_provider: list[ProviderCost]
    by_tenant: list[TenantRevenue]
    invoiced: list[CurrencyTotals]
    checks: list[ReconciliationCheck]
    ok: bool


class ClosedPeriod(msgspec.Struct, frozen=True, kw_only=True):
    period: str
    timezone: str
    starts_at: datetime
    ends_at: datetime
    statements: int
    closed_at: datetime


class CloseResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a close run did: the periods it closed (empty when there was nothing to do)."""

    closed: list[ClosedPeriod]
    documents_issued: int


class DocumentList(msgspec.Struct, frozen=True, kw_only=True):
    period: str
    documents: list[FinanceDocument]


SCHEMAS: dict[str, Any] = {
    "document": FinanceDocument,
    "document-export": DocumentExport,
    "statement": Statement,
    "statement-export": StatementExport,
    "reconciliation": ReconciliationReport,
}


def json_schema(name: str) -> dict[str, Any]:
    """The JSON Schema of one format (`document`, `statement`, ...)."""
    schema: dict[str, Any] = msgspec.json.schema(SCHEMAS[name])
    return schema
