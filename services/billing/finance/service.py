"""Finance logic: issuing invoices and credit notes, statements, the period close, reconciliation.

The service never opens a unit of work on its own behalf except where the work is the unit:
issuing a batch of documents (with its checkpoint) and closing a period (with its statements).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from billing.finance import repository
from billing.finance.config import FinanceConfig, Party
from billing.finance.errors import (
    CloseDeferred,
    DocumentNotFound,
    PeriodNotEnded,
    UnknownTenant,
)
from billing.finance.period import Period, local_date, period_of, require_started
from billing.finance.repository import (
    Consumption,
    DocumentRow,
    LedgerMoneyLine,
    StatementRow,
    TenantRow,
    UsageAggregate,
    UsageFunding,
)
from billing.finance.schemas import (
    ClosedPeriod,
    CloseResult,
    CreditPosition,
    CurrencyTotals,
    DocumentLine,
    DocumentReference,
    FinanceDocument,
    ModelRevenue,
    MoneyLineKind,
    PeriodStatus,
    ProviderCost,
    ReconciliationCheck,
    ReconciliationReport,
    ReconciliationTotals,
    Statement,
    StatementMoneyLine,
    StatementTotals,
    StatementUsageLine,
    TenantRevenue,
)
from billing.finance.vat import TaxTreatment, currency_exponent, net_of_gross, tax_treatment
from tally.db import Connection
from tally.eventlog import StoredEvent
from tally.eventlog.reader import Checkpoint
from tally.events.billing import CreditsPurchased, CreditsRefunded
from tally.log import get_logger
from tally.money import format_credits

log = get_logger(__name__)

INVOICE_SERIES = "INV"
CREDIT_NOTE_SERIES = "CN"
# The log's beginning, for folding a tenant's whole history.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_END_OF_TIME = datetime(2200, 1, 1, tzinfo=UTC)

_document_decoder = msgspec.json.Decoder(FinanceDocument)
_statement_decoder = msgspec.json.Decoder(Statement)
_encoder = msgspec.json.Encoder()


def decode_document(body: bytes) -> FinanceDocument:
    return _document_decoder.decode(body)


def decode_statement(body: bytes) -> Statement:
    return _statement_decoder.decode(body)


def customer_party(tenant: TenantRow) -> Party:
    """The tenant's billing details as they stand when a document is issued (then frozen)."""
    return Party(
        name=tenant.name,
        address_lines=_address_lines(tenant.address),
        country=(tenant.country or "").strip().upper() or None,
        tax_id=tenant.tax_id or None,
        email=tenant.billing_email or None,
    )


def _address_lines(address: Any) -> list[str]:
    # The tenant service stores addresses as JSON; accept Stripe's shape (line1, line2,
    # postal_code, city, state, country), a list of lines, or plain text.
    if address is None:
        return []
    if isinstance(address, str):
        return [part.strip() for part in address.replace("|", "\n").splitlines() if part.strip()]
    if isinstance(address, list):
        return [str(part).strip() for part in address if str(part).strip()]
    if isinstance(address, dict):
        lines = [str(address[key]) for key in ("line1", "line2") if address.get(key)]
        city = " ".join(str(address[k]) for k in ("postal_code", "city") if address.get(k))
        if city:
            lines.append(city)
        if address.get("state"):
            lines.append(str(address["state"]))
        known = {"line1", "line2", "postal_code", "city", "state", "country"}
        lines.extend(str(v) for k, v in address.items() if k not in known and v)
        return lines
    return [str(address)]


def usage_lines_of(aggregates: Iterable[UsageAggregate]) -> list[StatementUsageLine]:
    """Usage by model (providers summed), sorted by model name."""
    by_model: dict[str, list[int]] = {}
    for agg in aggregates:
        sums = by_model.setdefault(agg.model, [0] * 10)
        for i, value in enumerate(
            (
                agg.requests,
                agg.input_tokens,
                agg.cached_input_tokens,
                agg.cache_write_tokens,
                agg.output_tokens,
                agg.reasoning_tokens,
                agg.images,
                agg.base_nano,
                agg.charge_nano,
                0,
            )
        ):
            sums[i] += value
    return [
        StatementUsageLine(
            model=model,
            requests=s[0],
            input_tokens=s[1],
            cached_input_tokens=s[2],
            cache_write_tokens=s[3],
            output_tokens=s[4],
            reasoning_tokens=s[5],
            images=s[6],
            base_cost_nano=s[7],
            margin_nano=s[8] - s[7],
            credits_nano=s[8],
        )
        for model, s in sorted(by_model.items())
    ]


# Ledger kinds as statement line kinds; usage is the usage lines, from the rollups.
_LINE_KIND: dict[str, MoneyLineKind] = {
    "purchase": "purchase",
    "grant": "grant",
    "refund": "refund",
    "expiry": "expiry",
    "adjustment": "adjustment",
    "dispute_lost": "chargeback",
    "dispute_frozen": "dispute_frozen",
    "dispute_restored": "dispute_restored",
}


class CreditFlows(msgspec.Struct, kw_only=True):
    """Everything that moved a tenant's credits over a time range, summed from billing's
    projections. Added up from the beginning of time it gives the position at an instant."""

    balance_nano: int = 0
    into_paid_nano: int = 0
    into_promotional_nano: int = 0
    out_paid_nano: int = 0
    out_promotional_nano: int = 0
    debt_made_nano: int = 0
    debt_repaid_nano: int = 0

    def plus(self, other: CreditFlows) -> CreditFlows:
        return CreditFlows(
            **{name: getattr(self, name) + getattr(other, name) for name in self.__struct_fields__}
        )

    def position(self) -> CreditPosition:
        paid = self.into_paid_nano - self.out_paid_nano
        promotional = self.into_promotional_nano - self.out_promotional_nano
        debt = self.debt_made_nano - self.debt_repaid_nano
        return CreditPosition(
            balance_nano=self.balance_nano,
            paid_nano=paid,
            promotional_nano=promotional,
            debt_nano=debt,
            # What the lots hold that the balance does not count: credits held by open disputes,
            # claims waiting for their purchase, and debt other than usage (a refund or
            # correction larger than the credits left), which the lots repay like usage debt.
            frozen_nano=paid + promotional - debt - self.balance_nano,
        )


class PeriodFigures(msgspec.Struct, kw_only=True):
    """One tenant's period as billing's projections give it."""

    opening: CreditFlows
    during: CreditFlows
    lines: list[LedgerMoneyLine]
    usage: list[UsageAggregate]
    debt_settled_paid_nano: int = 0
    debt_settled_promotional_nano: int = 0


def build_statement(
    tenant: TenantRow,
    period: Period,
    config: FinanceConfig,
    figures: PeriodFigures,
    *,
    final: bool,
) -> Statement:
    """Assemble a statement from the period's figures (billing's projections)."""
    tz = config.tz
    usage_lines = usage_lines_of(figures.usage)
    base = sum(line.base_cost_nano for line in usage_lines)
    usage_total = sum(line.credits_nano for line in usage_lines)

    def lines_of(*kinds: str) -> int:
        return sum(line.amount_nano for line in figures.lines if line.kind in kinds)

    closing = figures.opening.plus(figures.during)
    return Statement(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        period=str(period),
        status="final" if final else "provisional",
        timezone=config.timezone,
        starts_at=period.starts_at(tz),
        ends_at=period.ends_at(tz),
        opening_balance_nano=figures.opening.balance_nano,
        closing_balance_nano=closing.balance_nano,
        money_lines=[
            StatementMoneyLine(
                kind=_LINE_KIND[line.kind],
                date=local_date(line.occurred_at, tz),
                recorded_at=line.occurred_at,
                reference=line.reference,
                description=line.description,
                amount_nano=line.amount_nano,
            )
            for line in figures.lines
        ],
        usage_lines=usage_lines,
        totals=StatementTotals(
            purchases_nano=lines_of("purchase"),
            grants_nano=lines_of("grant"),
            refunds_nano=-lines_of("refund"),
            expiries_nano=-lines_of("expiry"),
            adjustments_nano=lines_of("adjustment"),
            # Net credits disputes took from the balance in the period (held, given back, lost).
            chargebacks_nano=-lines_of("dispute_lost", "dispute_frozen", "dispute_restored"),
            usage_nano=usage_total,
            base_cost_nano=base,
            margin_nano=usage_total - base,
            usage_paid_nano=sum(agg.paid_nano for agg in figures.usage),
            usage_promotional_nano=sum(agg.promo_nano for agg in figures.usage),
            usage_unfunded_nano=sum(agg.unfunded_nano for agg in figures.usage),
            debt_settled_paid_nano=figures.debt_settled_paid_nano,
            debt_settled_promotional_nano=figures.debt_settled_promotional_nano,
        ),
        opening=figures.opening.position(),
        closing=closing.position(),
    )


def statement_lines_sum(statement: Statement) -> int:
    """Σ money lines - Σ usage credits: equals closing - opening on every valid statement."""
    return sum(line.amount_nano for line in statement.money_lines) - sum(
        line.credits_nano for line in statement.usage_lines
    )


class ComputedPeriod(msgspec.Struct, kw_only=True):
    """A period's statements computed from billing's projections, with their usage."""

    statements: list[Statement]
    usage: list[UsageAggregate]


def _period_figures(
    start: datetime,
    usage_before: UsageFunding,
    usage: list[UsageAggregate],
    money_before: tuple[int, int],
    lines: list[LedgerMoneyLine],
    lots: dict[str, tuple[int, int]],
    consumed: list[Consumption],
) -> PeriodFigures:
    """One tenant's flows before the period and during it (every input already cut at the
    period's end)."""
    opening = CreditFlows(
        balance_nano=money_before[0] - usage_before.charge_nano,
        into_paid_nano=lots["paid"][0],
        into_promotional_nano=lots["promotional"][0],
        out_paid_nano=usage_before.paid_nano,
        out_promotional_nano=usage_before.promo_nano,
        debt_made_nano=usage_before.unfunded_nano,
    )
    during = CreditFlows(
        balance_nano=sum(line.amount_nano for line in lines)
        - sum(agg.charge_nano for agg in usage),
        into_paid_nano=lots["paid"][1],
        into_promotional_nano=lots["promotional"][1],
        out_paid_nano=sum(agg.paid_nano for agg in usage),
        out_promotional_nano=sum(agg.promo_nano for agg in usage),
        debt_made_nano=sum(agg.unfunded_nano for agg in usage),
    )
    settled = {"paid": 0, "promotional": 0}
    for row in consumed:
        flows = opening if row.at < start else during
        if row.funding == "paid":
            flows.out_paid_nano += row.amount_nano
        else:
            flows.out_promotional_nano += row.amount_nano
        if row.reason == "usage_debt":
            flows.debt_repaid_nano += row.amount_nano
            if flows is during:
                settled[row.funding] += row.amount_nano
    return PeriodFigures(
        opening=opening,
        during=during,
        lines=lines,
        usage=usage,
        debt_settled_paid_nano=settled["paid"],
        debt_settled_promotional_nano=settled["promotional"],
    )


# Tenants per read when streaming an open month's statements (bounds the export's memory).
STATEMENT_CHUNK = 500


class FinanceService:
    # --- tenants and periods ---------------------------------------------------------------

    async def resolve_tenant(self, conn: Connection, id_or_name: str) -> TenantRow:
        """A tenant by id or (case-insensitive) name; 404 when there is none."""
        try:
            tenant_id = UUID(id_or_name)
        except ValueError:
            tenant = await repository.tenant_by_name(conn, id_or_name)
        else:
            tenant = await repository.tenant_by_id(conn, tenant_id)
        if tenant is None:
            raise UnknownTenant(f"no tenant {id_or_name!r}", param="tenant")
        return tenant

    async def tenant(self, conn: Connection, tenant_id: UUID) -> TenantRow:
        tenant = await repository.tenant_by_id(conn, tenant_id)
        if tenant is None:
            raise UnknownTenant("tenant not found", param="tenant_id")
        return tenant

    async def period_status(self, conn: Connection, period: Period) -> PeriodStatus:
        return "closed" if await repository.period_row(conn, str(period)) else "open"

    async def closed_periods(self, conn: Connection) -> list[ClosedPeriod]:
        """Every closed period, oldest first."""
        return [ClosedPeriod(**dict(row)) for row in await repository.period_rows(conn)]

    # --- invoices and credit notes ---------------------------------------------------------

    async def issue_pending_documents(
        self,
        pool: asyncpg.Pool,
        config: FinanceConfig,
        *,
        now: datetime | None = None,
        batch_size: int = 200,
    ) -> int:
        """Issue the invoice of every new purchase and the credit note of every new refund.

        Reads the log gap-safely from this consumer's checkpoint; each batch's documents, their
        numbers and the checkpoint commit together, so a crash or a concurrent run never issues
        a document twice or skips a number. Returns how many documents were issued.
        """
        issued = 0
        while True:
            async with pool.acquire() as conn, conn.transaction():
                checkpoint = await repository.lock_document_consumer(conn)
                events = await repository.read_document_events(conn, checkpoint, batch_size)
                if not events:
                    return issued
                for stored in events:
                    if await self._issue_for_event(conn, config, stored, now):
                        issued += 1
                last = events[-1]
                await repository.save_document_checkpoint(
                    conn, Checkpoint(last.txid, last.position)
                )
            if len(events) < batch_size:
                return issued

    async def _issue_dates(
        self, conn: Connection, config: FinanceConfig, at: datetime, now: datetime | None
    ) -> tuple[date, Period]:
        # Documents are dated when the sale happened; if that month is already closed (a late
        # commit), the document goes into the open month instead: closed periods never change.
        tz = config.tz
        period = period_of(at, tz)
        if await repository.period_row(conn, str(period)) is None:
            return local_date(at, tz), period
        today = now or datetime.now(UTC)
        return local_date(today, tz), period_of(today, tz)

    async def _issue_for_event(
        self, conn: Connection, config: FinanceConfig, stored: StoredEvent, now: datetime | None
    ) -> bool:
        event = stored.event
        if isinstance(event, CreditsPurchased):
            if await repository.document_exists(conn, "invoice", event.purchase_id):
                return False
            await self._issue_invoice(conn, config, stored, event, now)
            return True
        if isinstance(event, CreditsRefunded):
            if await repository.document_exists(conn, "credit_note", event.refund_id):
                return False
            await self._issue_credit_note(conn, config, stored, event, now)
            return True
        return False

    async def _customer(self, conn: Connection, tenant_id: UUID) -> Party:
        tenant = await repository.tenant_by_id(conn, tenant_id)
        if tenant is None:
            log.warning("document for a tenant missing from the tenants table", tenant_id=tenant_id)
            return Party(name=f"Tenant {tenant_id}")
        return customer_party(tenant)

    async def _issue_invoice(
        self,
        conn: Connection,
        config: FinanceConfig,
        stored: StoredEvent,
        event: CreditsPurchased,
        now: datetime | None,
    ) -> None:
        customer = await self._customer(conn, event.tenant_id)
        treatment = tax_treatment(config, customer.country, customer.tax_id)
        currency = event.currency.upper()
        net = net_of_gross(event.paid_minor, treatment.rate_pct)
        tax = event.paid_minor - net
        issue_date, period = await self._issue_dates(conn, config, stored.recorded_at, now)
        number = await repository.take_document_number(conn, config.issuer_key, INVOICE_SERIES)
        document = FinanceDocument(
            id=uuid.uuid4(),
            kind="invoice",
            document_number=f"{INVOICE_SERIES}-{number:06d}",
            period=str(period),
            issue_date=issue_date,
            supply_date=local_date(stored.recorded_at, config.tz),
            tenant_id=event.tenant_id,
            issuer=config.issuer,
            customer=customer,
            currency=currency,
            currency_exponent=currency_exponent(currency),
            lines=[
                DocumentLine(
                    line=1,
                    description=f"{_credits_text(event.amount_nano)} Tally credits"
                    f" (purchase {event.purchase_id})",
                    credits_nano=event.amount_nano,
                    net_minor=net,
                    tax_rate_pct=treatment.rate_pct,
                    tax_minor=tax,
                    gross_minor=event.paid_minor,
                )
            ],
            net_minor=net,
            tax_minor=tax,
            gross_minor=event.paid_minor,
            tax_rate_pct=treatment.rate_pct,
            reverse_charge=treatment.reverse_charge,
            notes=[treatment.note] if treatment.note else [],
            purchase_id=event.purchase_id,
            payment_reference=event.stripe_payment_intent,
        )
        await self._insert(conn, config, document, number, stored.position, None)

    async def _issue_credit_note(
        self,
        conn: Connection,
        config: FinanceConfig,
        stored: StoredEvent,
        event: CreditsRefunded,
        now: datetime | None,
    ) -> None:
        invoice_row = await repository.invoice_of_purchase(conn, event.tenant_id, event.purchase_id)
        currency = event.currency.upper()
        notes: list[str] = []
        references: DocumentReference | None = None
        if invoice_row is not None:
            invoice = decode_document(invoice_row["body"].encode())
            # A credit note corrects its invoice: same parties' tax position, same rate.
            treatment = TaxTreatment(
                invoice.tax_rate_pct,
                reverse_charge=invoice.reverse_charge,
                note=invoice.notes[0] if invoice.notes else None,
            )
            customer = invoice.customer
            references = DocumentReference(
                id=invoice.id,
                document_number=invoice.document_number,
                issue_date=invoice.issue_date,
            )
            # Split the refunds cumulatively, so the credit notes of a fully refunded invoice
            # add up to exactly its net and tax, whatever the rounding of each part.
            prior_net, prior_gross = await repository.credited_so_far(conn, invoice.id)
            cumulative_net = net_of_gross(-prior_gross + event.refunded_minor, treatment.rate_pct)
            net = cumulative_net + prior_net
            notes.append(f"Corrects invoice {invoice.document_number} of {invoice.issue_date}.")
        else:
            log.warning("refund of a purchase without invoice", purchase_id=event.purchase_id)
            customer = await self._customer(conn, event.tenant_id)
            treatment = tax_treatment(config, customer.country, customer.tax_id)
            net = net_of_gross(event.refunded_minor, treatment.rate_pct)
            notes.append(f"Refund of purchase {event.purchase_id}.")
        if treatment.note:
            notes.append(treatment.note)
        tax = event.refunded_minor - net
        issue_date, period = await self._issue_dates(conn, config, stored.recorded_at, now)
        number = await repository.take_document_number(conn, config.issuer_key, CREDIT_NOTE_SERIES)
        document = FinanceDocument(
            id=uuid.uuid4(),
            kind="credit_note",
            document_number=f"{CREDIT_NOTE_SERIES}-{number:06d}",
            period=str(period),
            issue_date=issue_date,
            supply_date=local_date(stored.recorded_at, config.tz),
            tenant_id=event.tenant_id,
            issuer=config.issuer,
            customer=customer,
            currency=currency,
            currency_exponent=currency_exponent(currency),
            lines=[
                DocumentLine(
                    line=1,
                    description=f"Refund of {_credits_text(event.amount_nano)} Tally credits"
                    f" (refund {event.refund_id})",
                    credits_nano=-event.amount_nano,
                    net_minor=-net,
                    tax_rate_pct=treatment.rate_pct,
                    tax_minor=-tax,
                    gross_minor=-event.refunded_minor,
                )
            ],
            net_minor=-net,
            tax_minor=-tax,
            gross_minor=-event.refunded_minor,
            tax_rate_pct=treatment.rate_pct,
            reverse_charge=treatment.reverse_charge,
            notes=notes,
            purchase_id=event.purchase_id,
            refund_id=event.refund_id,
            references=references,
        )
        await self._insert(
            conn,
            config,
            document,
            number,
            stored.position,
            references.id if references else None,
        )

    async def _insert(
        self,
        conn: Connection,
        config: FinanceConfig,
        document: FinanceDocument,
        number: int,
        source_position: int,
        references_id: UUID | None,
    ) -> None:
        await repository.insert_document(
            conn,
            DocumentRow(
                id=document.id,
                kind=document.kind,
                issuer=config.issuer_key,
                series=document.document_number.split("-", 1)[0],
                number=number,
                document_number=document.document_number,
                tenant_id=document.tenant_id,
                source_id=document.refund_id or document.purchase_id,
                source_position=source_position,
                references_id=references_id,
                period=document.period,
                issue_date=document.issue_date,
                supply_date=document.supply_date,
                currency=document.currency,
                net_minor=document.net_minor,
                tax_minor=document.tax_minor,
                gross_minor=document.gross_minor,
                body=_encoder.encode(document),
            ),
        )

    async def documents(
        self, conn: Connection, period: Period, tenant_id: UUID | None
    ) -> list[FinanceDocument]:
        """The invoices and credit notes issued in `period` (one tenant, or all when None)."""
        return [doc async for doc in self.stream_documents(conn, period, tenant_id)]

    async def stream_documents(
        self, conn: Connection, period: Period, tenant_id: UUID | None
    ) -> AsyncIterator[FinanceDocument]:
        """The same, streamed from a cursor (call inside a transaction)."""
        async for body in repository.stream_document_bodies(conn, str(period), tenant_id):
            yield decode_document(body)

    async def document(self, conn: Connection, document_id: UUID) -> FinanceDocument:
        found = await repository.document_body(conn, document_id)
        if found is None:
            raise DocumentNotFound("document not found", param="document_id")
        return decode_document(found[1])

    # --- statements ------------------------------------------------------------------------

    async def statement(
        self,
        conn: Connection,
        config: FinanceConfig,
        tenant: TenantRow,
        period: Period,
        *,
        now: datetime | None = None,
    ) -> Statement:
        """A tenant's statement of `period`: the stored one once closed, else computed now.

        Call inside a repeatable-read transaction, so every figure comes from one snapshot.
        """
        require_started(period, config.tz, now or datetime.now(UTC))
        stored = await repository.statement_body(conn, tenant.id, str(period))
        if stored is not None:
            return decode_statement(stored)
        computed = await self.compute_period(conn, config, period, [tenant], final=False)
        return computed.statements[0]

    async def compute_period(
        self,
        conn: Connection,
        config: FinanceConfig,
        period: Period,
        tenants: list[TenantRow],
        *,
        final: bool,
    ) -> ComputedPeriod:
        """Statements of `tenants` for `period`, read from the billing fold's projections.

        Counts what the fold has applied, no more. Opening and closing balances are the sums of
        every ledger change (money lines, usage by rollup hour) before each bound, so the lines
        sum to the change in balance by construction; the reconciliation checks them against
        the fold's running balance and the log.
        """
        tz = config.tz
        start, end = period.starts_at(tz), period.ends_at(tz)
        only = [tenant.id for tenant in tenants]
        usage = await repository.usage_by_model(conn, start, end, only)
        usage_before = await repository.usage_funding_before(conn, start, only)
        lines = await repository.money_lines(conn, start, end, only)
        money_before = await repository.money_before(conn, start, only)
        lots = await repository.lots_opened(conn, start, end, only)
        consumption = await repository.consumption_through(conn, end, only)

        usage_by_tenant: dict[UUID, list[UsageAggregate]] = defaultdict(list)
        for agg in usage:
            usage_by_tenant[agg.tenant_id].append(agg)
        lines_by_tenant: dict[UUID, list[LedgerMoneyLine]] = defaultdict(list)
        for line in lines:
            lines_by_tenant[line.tenant_id].append(line)
        consumed: dict[UUID, list[Consumption]] = defaultdict(list)
        for row in consumption:
            if row.at < end:
                consumed[row.tenant_id].append(row)

        statements: list[Statement] = []
        for tenant in tenants:
            figures = _period_figures(
                start,
                usage_before.get(tenant.id, UsageFunding()),
                usage_by_tenant.get(tenant.id, []),
                money_before.get(tenant.id, (0, 0)),
                lines_by_tenant.get(tenant.id, []),
                {f: lots.get((tenant.id, f), (0, 0)) for f in ("paid", "promotional")},
                consumed.get(tenant.id, []),
            )
            statements.append(build_statement(tenant, period, config, figures, final=final))
        return ComputedPeriod(statements=statements, usage=usage)

    async def stream_statements(
        self, conn: Connection, config: FinanceConfig, period: Period
    ) -> AsyncIterator[Statement]:
        """Every tenant's statement of `period`: streamed from storage once the period is
        closed, computed from billing's projections while open. Call inside a repeatable-read
        transaction."""
        if await repository.period_row(conn, str(period)) is not None:
            async for body in repository.stream_statement_bodies(conn, str(period)):
                yield decode_statement(body)
            return
        # A chunk of tenants at a time, so memory stays bounded however many tenants there are.
        tenants = await repository.tenants_created_before(conn, period.ends_at(config.tz))
        for first in range(0, len(tenants), STATEMENT_CHUNK):
            chunk = tenants[first : first + STATEMENT_CHUNK]
            computed = await self.compute_period(conn, config, period, chunk, final=False)
            for statement in computed.statements:
                yield statement

    # --- the period close ------------------------------------------------------------------

    async def close_due_periods(
        self, pool: asyncpg.Pool, config: FinanceConfig, *, now: datetime | None = None
    ) -> CloseResult:
        """Close every month that ended (plus the grace time) and is not closed yet.

        Idempotent: a second run finds every due period closed and does nothing.
        """
        now = now or datetime.now(UTC)
        grace = timedelta(minutes=config.close_grace_minutes)
        last_due = period_of(now - grace, config.tz).previous()
        return await self.close_through(pool, config, last_due, now=now)

    async def close_through(
        self,
        pool: asyncpg.Pool,
        config: FinanceConfig,
        target: Period,
        *,
        now: datetime | None = None,
        wait_seconds: float = 10.0,
    ) -> CloseResult:
        """Close `target` and every earlier month not closed yet, oldest first.

        Every purchase and refund of those months is invoiced first. One still hidden behind
        a running transaction (the log is read gap-safely) defers the close: `CloseDeferred`
        after `wait_seconds`, and the next run tries again. So does a billing fold that has not
        applied every event those months need: statements are read from its projections.
        """
        now = now or datetime.now(UTC)
        tz = config.tz
        grace = timedelta(minutes=config.close_grace_minutes)
        if target.ends_at(tz) + grace > now:
            raise PeriodNotEnded(
                f"period {target} can be closed from {target.ends_at(tz) + grace:%Y-%m-%d %H:%M}"
                " UTC on",
                param="period",
            )
        issued = await self._issue_everything_before(
            pool, config, target.ends_at(tz), now, wait_seconds
        )
        async with pool.acquire() as conn:
            first_at = await repository.first_event_at(conn)
            already = {row["period"] for row in await repository.period_rows(conn)}
        if first_at is None:
            return CloseResult(closed=[], documents_issued=issued)
        due: list[Period] = []
        period = period_of(first_at, tz)
        while period <= target:
            if str(period) not in already:
                due.append(period)
            period = period.next()
        if not due:
            return CloseResult(closed=[], documents_issued=issued)
        # The latest due month's end covers every earlier one.
        await self._wait_for_billing_fold(pool, due[-1].ends_at(tz), wait_seconds)
        closed: list[ClosedPeriod] = []
        for period in due:
            result = await self._close_one(pool, config, period)
            if result is not None:
                closed.append(result)
        return CloseResult(closed=closed, documents_issued=issued)

    async def _issue_everything_before(
        self,
        pool: asyncpg.Pool,
        config: FinanceConfig,
        end: datetime,
        now: datetime,
        wait_seconds: float,
    ) -> int:
        issued = 0
        deadline = time.monotonic() + wait_seconds
        while True:
            issued += await self.issue_pending_documents(pool, config, now=now)
            async with pool.acquire() as conn:
                missing = await repository.undocumented_count(conn, EPOCH, end)
            if missing == 0:
                return issued
            if time.monotonic() >= deadline:
                raise CloseDeferred(
                    f"{missing} purchase(s) or refund(s) before {end:%Y-%m-%d} are not visible"
                    " yet (a transaction is still running); the close will be retried",
                )
            await asyncio.sleep(0.2)

    async def _wait_for_billing_fold(
        self, pool: asyncpg.Pool, end: datetime, wait_seconds: float
    ) -> None:
        # Statements are read from the billing fold's projections: a month closed while the
        # fold is behind would be missing usage for good (closed months never change).
        deadline = time.monotonic() + wait_seconds
        while True:
            async with pool.acquire() as conn:
                behind = await repository.unfolded_count(conn, end, end)
            if behind == 0:
                return
            if time.monotonic() >= deadline:
                raise _fold_behind(behind, end)
            await asyncio.sleep(0.2)

    async def _close_one(
        self, pool: asyncpg.Pool, config: FinanceConfig, period: Period
    ) -> ClosedPeriod | None:
        tz = config.tz
        async with pool.acquire() as conn:
            # A session-level lock taken before the transaction: the repeatable-read snapshot
            # must start after a concurrent close has committed, or we would not see it.
            await repository.lock_periods_session(conn)
            try:
                async with conn.transaction(isolation="repeatable_read"):
                    if await repository.period_row(conn, str(period)) is not None:
                        return None
                    # Checked again in the snapshot the statements are read from.
                    behind = await repository.unfolded_count(
                        conn, period.ends_at(tz), period.ends_at(tz)
                    )
                    if behind:
                        raise _fold_behind(behind, period.ends_at(tz))
                    tenants = await repository.tenants_created_before(conn, period.ends_at(tz))
                    computed = await self.compute_period(conn, config, period, tenants, final=True)
                    await repository.insert_period(
                        conn,
                        str(period),
                        config.timezone,
                        period.starts_at(tz),
                        period.ends_at(tz),
                        len(computed.statements),
                    )
                    await repository.insert_statements(
                        conn,
                        str(period),
                        [
                            StatementRow(
                                statement.tenant_id,
                                statement.opening_balance_nano,
                                statement.closing_balance_nano,
                                _encoder.encode(statement),
                                _encoder.encode(statement.closing),
                            )
                            for statement in computed.statements
                        ],
                    )
                    row = await repository.period_row(conn, str(period))
                    assert row is not None  # inserted just above
            finally:
                await repository.unlock_periods_session(conn)
        log.info("finance period closed", period=str(period), statements=len(tenants))
        return ClosedPeriod(**dict(row))

    # --- reconciliation --------------------------------------------------------------------

    async def reconciliation(
        self,
        conn: Connection,
        config: FinanceConfig,
        period: Period,
        *,
        now: datetime | None = None,
    ) -> ReconciliationReport:
        """Revenue, provider costs, margin and liability of `period`, checked against the log.

        The figures are read from billing's projections, as the statements are; they are
        checked against the log (usage parsed from every usage event, every payment against
        its document), against billing's running balances, and a closed period's stored
        statements and the previous period's closing balances against them.
        Call inside a repeatable-read transaction.
        """
        tz = config.tz
        require_started(period, tz, now or datetime.now(UTC))
        status = await self.period_status(conn, period)
        tenants = await repository.tenants_created_before(conn, period.ends_at(tz))
        computed = await self.compute_period(
            conn, config, period, tenants, final=status == "closed"
        )
        checks: list[ReconciliationCheck] = []

        unbalanced = [
            s.tenant_name
            for s in computed.statements
            if s.opening_balance_nano + statement_lines_sum(s) != s.closing_balance_nano
        ]
        checks.append(
            _check(
                "statement lines sum to the change in balance",
                not unbalanced,
                f"{len(computed.statements)} statements" if not unbalanced else str(unbalanced),
            )
        )
        checks.append(await self._check_usage_against_log(conn, config, period, computed))
        checks.append(await self._check_running_balances(conn, computed))
        checks.extend(await self._check_against_closed(conn, period, computed))
        checks.extend(await self._check_documents(conn, config, period))

        by_model: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        by_provider: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for agg in computed.usage:
            m = by_model[agg.model]
            m[0] += agg.requests
            m[1] += agg.charge_nano
            m[2] += agg.base_nano
            p = by_provider[agg.provider]
            p[0] += agg.requests
            p[1] += agg.base_nano
        by_tenant = [
            TenantRevenue(
                tenant_id=s.tenant_id,
                tenant_name=s.tenant_name,
                usage_nano=s.totals.usage_nano,
                base_cost_nano=s.totals.base_cost_nano,
                margin_nano=s.totals.margin_nano,
                recognized_revenue_nano=s.totals.usage_paid_nano + s.totals.debt_settled_paid_nano,
                promotional_usage_nano=s.totals.usage_promotional_nano
                + s.totals.debt_settled_promotional_nano,
                unfunded_usage_nano=s.totals.usage_unfunded_nano,
                closing=s.closing,
            )
            for s in computed.statements
        ]
        totals = _reconciliation_totals(computed.statements)
        invoiced = [
            CurrencyTotals(
                currency=row["currency"],
                invoices=row["invoices"],
                credit_notes=row["credit_notes"],
                net_minor=int(row["net"]),
                tax_minor=int(row["tax"]),
                gross_minor=int(row["gross"]),
            )
            for row in await repository.document_totals(conn, str(period))
        ]
        model_total = sum(v[1] for v in by_model.values())
        checks.append(
            _check(
                "revenue by model = revenue by tenant",
                model_total == totals.usage_nano,
                f"{format_credits(model_total)} credits",
            )
        )
        return ReconciliationReport(
            period=str(period),
            period_status=status,
            totals=totals,
            by_model=[
                ModelRevenue(
                    model=model,
                    requests=v[0],
                    credits_nano=v[1],
                    base_cost_nano=v[2],
                    margin_nano=v[1] - v[2],
                )
                for model, v in sorted(by_model.items())
            ],
            by_provider=[
                ProviderCost(provider=provider, requests=v[0], base_cost_nano=v[1])
                for provider, v in sorted(by_provider.items())
            ],
            by_tenant=by_tenant,
            invoiced=invoiced,
            checks=checks,
            ok=all(check.ok for check in checks),
        )

    async def _check_against_closed(
        self, conn: Connection, period: Period, computed: ComputedPeriod
    ) -> list[ReconciliationCheck]:
        checks: list[ReconciliationCheck] = []
        previous = await repository.closing_balances(conn, str(period.previous()))
        if previous:
            off = [
                s.tenant_name
                for s in computed.statements
                if s.opening_balance_nano != previous.get(s.tenant_id, 0)
            ]
            checks.append(
                _check(
                    f"opening balances = closing balances of {period.previous()}",
                    not off,
                    "every tenant" if not off else str(off),
                )
            )
        if await repository.period_row(conn, str(period)) is None:
            return checks
        stored = {s.tenant_id: s async for s in _stream_stored(conn, str(period))}
        differing = [
            s.tenant_name
            for s in computed.statements
            if s.tenant_id not in stored
            # Names may change after the close; every figure may not.
            or _encoder.encode(msgspec.structs.replace(stored[s.tenant_id], tenant_name=""))
            != _encoder.encode(msgspec.structs.replace(s, tenant_name=""))
        ]
        checks.append(
            _check(
                "closed statements agree with the log",
                not differing and len(stored) == len(computed.statements),
                f"{len(stored)} stored statements" if not differing else str(differing),
            )
        )
        return checks

    async def _check_usage_against_log(
        self, conn: Connection, config: FinanceConfig, period: Period, computed: ComputedPeriod
    ) -> ReconciliationCheck:
        # The reference: every usage event of the period parsed from the log, bucketed like the
        # rollups (occurred_at). Charges differ only where the fold repriced a request
        # (pricing_mismatches says which); anything else means the fold is behind or wrong.
        tz = config.tz
        from_log = await repository.log_usage_by_model(
            conn, period.starts_at(tz), period.ends_at(tz)
        )
        tenants = {s.tenant_id for s in computed.statements}

        def keyed(aggs: Iterable[UsageAggregate]) -> dict[tuple[UUID, str, str], tuple[int, ...]]:
            return {
                (a.tenant_id, a.model, a.provider): (
                    a.requests,
                    a.input_tokens,
                    a.cached_input_tokens,
                    a.cache_write_tokens,
                    a.output_tokens,
                    a.reasoning_tokens,
                    a.images,
                    a.base_nano,
                    a.charge_nano,
                )
                for a in aggs
                if a.tenant_id in tenants
            }

        log_usage, rollups = keyed(from_log), keyed(computed.usage)
        differing = sorted(
            f"{tenant_id} {model} via {provider or '-'}"
            for tenant_id, model, provider in log_usage.keys() | rollups.keys()
            if log_usage.get((tenant_id, model, provider))
            != rollups.get((tenant_id, model, provider))
        )
        return _check(
            "usage by model agrees with the log",
            not differing,
            f"{len(rollups)} tenant x model x provider rows"
            if not differing
            else "; ".join(differing[:20]),
        )

    async def _check_running_balances(
        self, conn: Connection, computed: ComputedPeriod
    ) -> ReconciliationCheck:
        # The statements sum ledger changes by time; billing's running balance is the same
        # changes in fold order. Over the whole history both must give the same balance.
        only = computed.statements[0].tenant_id if len(computed.statements) == 1 else None
        running = await repository.folded_balances(conn, only)
        tenant_ids = None if only is None else [only]
        money = await repository.money_before(conn, _END_OF_TIME, tenant_ids)
        usage = await repository.usage_funding_before(conn, _END_OF_TIME, tenant_ids)
        off = [
            s.tenant_name
            for s in computed.statements
            if running.get(s.tenant_id, 0)
            != money.get(s.tenant_id, (0, 0))[0]
            - usage.get(s.tenant_id, UsageFunding()).charge_nano
        ]
        return _check(
            "ledger lines and usage rollups add up to the running balance",
            not off,
            "every tenant" if not off else str(off[:20]),
        )

    async def _check_documents(
        self, conn: Connection, config: FinanceConfig, period: Period
    ) -> list[ReconciliationCheck]:
        tz = config.tz
        events = await repository.document_events_of_range(
            conn, period.starts_at(tz), period.ends_at(tz)
        )
        documents = {
            row["source_id"]: row
            for row in await repository.documents_for_positions(
                conn, [row["position"] for row in events]
            )
        }
        problems: list[str] = []
        for row in events:
            data = msgspec.json.decode(row["data"])
            if row["type"] == "CreditsPurchased":
                doc = documents.get(data["purchase_id"])
                expected = data["paid_minor"]
                label = f"purchase {data['purchase_id']}"
            else:
                doc = documents.get(data["refund_id"])
                expected = -data["refunded_minor"]
                label = f"refund {data['refund_id']}"
            if doc is None:
                problems.append(f"{label}: no document")
            elif doc["gross_minor"] != expected or doc["currency"] != data["currency"].upper():
                problems.append(f"{label}: document amount differs from the payment")
            elif row["type"] == "CreditsRefunded" and doc["references_id"] is None:
                problems.append(f"{label}: credit note references no invoice")
        return [
            _check(
                "every purchase has its invoice and every refund its credit note",
                not problems,
                f"{len(events)} payments" if not problems else "; ".join(problems[:20]),
            )
        ]


async def _stream_stored(conn: Connection, period: str) -> AsyncIterator[Statement]:
    async for body in repository.stream_statement_bodies(conn, period):
        yield decode_statement(body)


def _fold_behind(count: int, end: datetime) -> CloseDeferred:
    return CloseDeferred(
        f"the billing fold has not applied {count} event(s) of the log before"
        f" {end:%Y-%m-%d %H:%M} UTC yet; the close will be retried once it has"
    )


def _check(name: str, ok: bool, detail: str) -> ReconciliationCheck:
    return ReconciliationCheck(name=name, ok=ok, detail=detail)


def _reconciliation_totals(statements: list[Statement]) -> ReconciliationTotals:
    def total(pick: Any) -> int:
        return sum(pick(s) for s in statements)

    return ReconciliationTotals(
        usage_nano=total(lambda s: s.totals.usage_nano),
        base_cost_nano=total(lambda s: s.totals.base_cost_nano),
        margin_nano=total(lambda s: s.totals.margin_nano),
        recognized_revenue_nano=total(
            lambda s: s.totals.usage_paid_nano + s.totals.debt_settled_paid_nano
        ),
        promotional_usage_nano=total(
            lambda s: s.totals.usage_promotional_nano + s.totals.debt_settled_promotional_nano
        ),
        unfunded_usage_nano=total(lambda s: s.totals.usage_unfunded_nano),
        purchases_nano=total(lambda s: s.totals.purchases_nano),
        grants_nano=total(lambda s: s.totals.grants_nano),
        refunds_nano=total(lambda s: s.totals.refunds_nano),
        expiries_nano=total(lambda s: s.totals.expiries_nano),
        adjustments_nano=total(lambda s: s.totals.adjustments_nano),
        chargebacks_nano=total(lambda s: s.totals.chargebacks_nano),
        opening_balance_nano=total(lambda s: s.opening_balance_nano),
        closing_balance_nano=total(lambda s: s.closing_balance_nano),
        paid_outstanding_nano=total(lambda s: s.closing.paid_nano),
        promotional_outstanding_nano=total(lambda s: s.closing.promotional_nano),
        debt_nano=total(lambda s: s.closing.debt_nano),
    )


def _credits_text(nano: int) -> str:
    text = format_credits(nano)
    return text.rstrip("0").rstrip(".") if "." in text else text


finance_service = FinanceService()
