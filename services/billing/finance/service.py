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
from billing.finance.fold import LotState, PeriodFold, fold_period
from billing.finance.period import Period, local_date, period_of, require_started
from billing.finance.repository import DocumentRow, StatementRow, TenantRow, UsageAggregate
from billing.finance.schemas import (
    ClosedPeriod,
    CloseResult,
    CreditPosition,
    CurrencyTotals,
    DocumentLine,
    DocumentReference,
    FinanceDocument,
    ModelRevenue,
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


def _position(credits: LotState) -> CreditPosition:
    return CreditPosition(
        balance_nano=credits.balance_nano,
        paid_nano=credits.outstanding_nano("paid"),
        promotional_nano=credits.outstanding_nano("promotional"),
        debt_nano=credits.debt_nano,
        frozen_nano=credits.frozen_nano,
    )


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


def build_statement(
    tenant: TenantRow,
    period: Period,
    config: FinanceConfig,
    fold: PeriodFold,
    usage: list[UsageAggregate],
    *,
    final: bool,
) -> Statement:
    """Assemble a statement from the period's fold and its usage by model."""
    tz = config.tz
    usage_lines = usage_lines_of(usage)
    moves = fold.moves
    base = sum(line.base_cost_nano for line in usage_lines)
    return Statement(
        tenant_id=tenant.id,
        tenant_name=tenant.name,
        period=str(period),
        status="final" if final else "provisional",
        timezone=config.timezone,
        starts_at=period.starts_at(tz),
        ends_at=period.ends_at(tz),
        opening_balance_nano=fold.opening.balance_nano,
        closing_balance_nano=fold.closing.balance_nano,
        money_lines=[
            StatementMoneyLine(
                kind=line.kind,
                date=local_date(line.at, tz),
                recorded_at=line.at,
                reference=line.reference,
                description=line.description,
                amount_nano=line.amount_nano,
            )
            for line in fold.lines
        ],
        usage_lines=usage_lines,
        totals=StatementTotals(
            purchases_nano=moves.purchased_nano,
            grants_nano=moves.granted_nano,
            refunds_nano=moves.refunded_nano,
            expiries_nano=moves.expired_nano,
            adjustments_nano=moves.adjusted_nano,
            chargebacks_nano=moves.charged_back_nano,
            usage_nano=moves.usage_nano,
            base_cost_nano=base,
            margin_nano=moves.usage_nano - base,
            usage_paid_nano=moves.usage_paid_nano,
            usage_promotional_nano=moves.usage_promotional_nano,
            usage_unfunded_nano=moves.usage_unfunded_nano,
            debt_settled_paid_nano=moves.debt_settled_paid_nano,
            debt_settled_promotional_nano=moves.debt_settled_promotional_nano,
        ),
        opening=_position(fold.opening),
        closing=_position(fold.closing),
    )


def statement_lines_sum(statement: Statement) -> int:
    """Σ money lines - Σ usage credits: equals closing - opening on every valid statement."""
    return sum(line.amount_nano for line in statement.money_lines) - sum(
        line.credits_nano for line in statement.usage_lines
    )


class ComputedPeriod(msgspec.Struct, kw_only=True):
    """A period's statements computed from the log, with the folds behind them."""

    statements: list[Statement]
    folds: dict[UUID, PeriodFold]
    usage: list[UsageAggregate]


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
        whole_history: bool = False,
    ) -> ComputedPeriod:
        """Statements of `tenants` for `period`, folded from the log (LOG SOURCE figures).

        The opening credits come from the previous month's closed statements, or, when it is
        not closed or `whole_history` asks for it, from folding everything before the period.
        """
        tz = config.tz
        start, end = period.starts_at(tz), period.ends_at(tz)
        only = tenants[0].id if len(tenants) == 1 else None
        openings = await self._opening_states(conn, config, period, only, whole_history)
        items = await repository.fold_items(conn, start, end, config.timezone, only)
        usage = await repository.usage_by_model(conn, start, end, only)
        usage_by_tenant: dict[UUID, list[UsageAggregate]] = defaultdict(list)
        for agg in usage:
            usage_by_tenant[agg.tenant_id].append(agg)
        statements: list[Statement] = []
        folds: dict[UUID, PeriodFold] = {}
        for tenant in tenants:
            fold = fold_period(openings.get(tenant.id, LotState()), items.get(tenant.id, []))
            folds[tenant.id] = fold
            statements.append(
                build_statement(
                    tenant, period, config, fold, usage_by_tenant.get(tenant.id, []), final=final
                )
            )
        return ComputedPeriod(statements=statements, folds=folds, usage=usage)

    async def _opening_states(
        self,
        conn: Connection,
        config: FinanceConfig,
        period: Period,
        only: UUID | None,
        whole_history: bool,
    ) -> dict[UUID, LotState]:
        previous = period.previous()
        if not whole_history and await repository.period_row(conn, str(previous)) is not None:
            return await repository.closing_states(conn, str(previous), only)
        # No closed month to start from: fold the tenant's whole history up to the period.
        items = await repository.fold_items(
            conn, EPOCH, period.starts_at(config.tz), config.timezone, only
        )
        return {tenant_id: fold_period(LotState(), its).closing for tenant_id, its in items.items()}

    async def stream_statements(
        self, conn: Connection, config: FinanceConfig, period: Period
    ) -> AsyncIterator[Statement]:
        """Every tenant's statement of `period`: streamed from storage once the period is
        closed, computed from the log while it is open. Call inside a repeatable-read
        transaction."""
        if await repository.period_row(conn, str(period)) is not None:
            async for body in repository.stream_statement_bodies(conn, str(period)):
                yield decode_statement(body)
            return
        tenants = await repository.tenants_created_before(conn, period.ends_at(config.tz))
        computed = await self.compute_period(conn, config, period, tenants, final=False)
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
        after `wait_seconds`, and the next run tries again.
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
        closed: list[ClosedPeriod] = []
        period = period_of(first_at, tz)
        while period <= target:
            if str(period) not in already:
                result = await self._close_one(pool, config, period)
                if result is not None:
                    closed.append(result)
            period = period.next()
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
                                _encoder.encode(computed.folds[statement.tenant_id].closing),
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

        Every figure is folded from the log afresh; a closed period's stored statements, the
        previous period's closing balances and the issued documents are compared with it.
        Call inside a repeatable-read transaction.
        """
        tz = config.tz
        require_started(period, tz, now or datetime.now(UTC))
        status = await self.period_status(conn, period)
        tenants = await repository.tenants_created_before(conn, period.ends_at(tz))
        # The whole history, never a stored opening: this is what the stored figures are
        # checked against.
        computed = await self.compute_period(
            conn, config, period, tenants, final=status == "closed", whole_history=True
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
        mismatched_usage = [
            s.tenant_name
            for s in computed.statements
            if sum(line.credits_nano for line in s.usage_lines) != s.totals.usage_nano
        ]
        checks.append(
            _check(
                "usage by model agrees with the folded usage",
                not mismatched_usage,
                "every tenant" if not mismatched_usage else str(mismatched_usage),
            )
        )
        lots_off = [
            s.tenant_name
            for s in computed.statements
            if s.closing.paid_nano + s.closing.promotional_nano - s.closing.debt_nano
            != s.closing_balance_nano
        ]
        checks.append(
            _check(
                "paid + promotional - debt = balance",
                not lots_off,
                "every tenant" if not lots_off else str(lots_off),
            )
        )
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
        previous = await repository.closing_states(conn, str(period.previous()))
        if previous:
            off = [
                s.tenant_name
                for s in computed.statements
                if s.opening_balance_nano != previous.get(s.tenant_id, LotState()).balance_nano
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
