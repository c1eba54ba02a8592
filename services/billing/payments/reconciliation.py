"""Reconciliation: what Stripe says was paid and refunded, against what the log credited.

For a half-open period [start, end) it lists Stripe's PaymentIntents and refunds created in it
(every page) and the purchase and refund events recorded in it, and reports each difference:

    payment_not_credited       a Tally payment succeeded at Stripe, no CreditsPurchased
    credited_without_payment   CreditsPurchased whose PaymentIntent is missing or not succeeded
    amount_mismatch            paid amount or currency differs between Stripe and the event
    refund_not_applied         a succeeded refund of a Tally payment, no CreditsRefunded
    refund_without_stripe      CreditsRefunded whose refund is missing or not succeeded
    refund_amount_mismatch     refunded amount or currency differs

An event recorded in the period for a Stripe object created just before it (a payment at
23:59:59 credited at 00:00:01) is looked up at Stripe one by one, so period edges are not
reported as mismatches. Payments without Tally metadata belong to someone else and are skipped.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from uuid import UUID

from billing.payments import repository as repo
from billing.payments.errors import InvalidPurchase, RunNotFound, StripeObjectMissing
from billing.payments.repository import LoggedPurchase, LoggedRefund, MismatchIn, RunRow
from billing.payments.runtime import PaymentsRuntime
from billing.payments.schemas import Mismatch, ReconciliationRun, ReconciliationRunList
from billing.payments.stripe_objects import PaymentIntent, Refund
from tally.log import get_logger

log = get_logger(__name__)

RECONCILE = "payments.reconcile"
MAX_PERIOD = timedelta(days=92)


def run_view(row: RunRow, mismatches: list[repo.MismatchRow] | None = None) -> ReconciliationRun:
    return ReconciliationRun(
        id=row.id,
        period_start=row.period_start,
        period_end=row.period_end,
        status=row.status,
        stripe_payments=row.stripe_payments,
        stripe_refunds=row.stripe_refunds,
        mismatch_count=row.mismatches,
        error=row.error,
        created_at=row.created_at,
        finished_at=row.finished_at,
        mismatches=None
        if mismatches is None
        else [
            Mismatch(
                kind=m.kind,
                detail=m.detail,
                tenant_id=m.tenant_id,
                stripe_id=m.stripe_id,
                purchase_id=m.purchase_id,
                expected_minor=m.expected_minor,
                actual_minor=m.actual_minor,
            )
            for m in mismatches
        ],
    )


def validate_period(start: datetime, end: datetime) -> None:
    if start.tzinfo is None or end.tzinfo is None:
        raise InvalidPurchase(
            "give times with a time zone (e.g. 2026-11-01T00:00:00Z)", param="period_start"
        )
    if start >= end:
        raise InvalidPurchase("period_start must be before period_end", param="period_end")
    if end - start > MAX_PERIOD:
        raise InvalidPurchase("a period is at most 92 days", param="period_end")


class Reconciliation:
    def __init__(self, runtime: PaymentsRuntime) -> None:
        self._runtime = runtime
        self._pool = runtime.pool

    async def request(self, start: datetime, end: datetime) -> ReconciliationRun:
        """Record a queued run and hand it to the worker."""
        validate_period(start, end)
        async with self._pool.acquire() as conn:
            row = await repo.insert_run(conn, uuid.uuid4(), start, end)
        if self._runtime.enqueue is not None:
            await self._runtime.enqueue(RECONCILE, (str(row.id),), f"reconcile:{row.id}")
        return run_view(row)

    async def run_period(self, start: datetime, end: datetime) -> ReconciliationRun:
        """Reconcile a period now (CLI and the daily cron)."""
        validate_period(start, end)
        async with self._pool.acquire() as conn:
            row = await repo.insert_run(conn, uuid.uuid4(), start, end)
        return await self.run(row.id)

    async def get(self, run_id: UUID) -> ReconciliationRun:
        async with self._pool.acquire() as conn:
            row = await repo.get_run(conn, run_id)
            if row is None:
                raise RunNotFound("reconciliation run not found", param="run_id")
            mismatches = await repo.list_mismatches(conn, run_id)
        return run_view(row, mismatches)

    async def list_runs(self, limit: int = 50) -> ReconciliationRunList:
        async with self._pool.acquire() as conn:
            rows = await repo.list_runs(conn, limit)
        return ReconciliationRunList(data=[run_view(r) for r in rows])

    async def run(self, run_id: UUID) -> ReconciliationRun:
        """Compare Stripe with the log for the run's period; store and log every mismatch."""
        async with self._pool.acquire() as conn:
            row = await repo.get_run(conn, run_id)
            if row is None:
                raise RunNotFound("reconciliation run not found", param="run_id")
            await repo.start_run(conn, run_id)
        try:
            payments, refunds, mismatches = await self._compare(row.period_start, row.period_end)
        except Exception as exc:
            async with self._pool.acquire() as conn:
                await repo.fail_run(conn, run_id, f"{type(exc).__name__}: {exc}")
            log.exception("reconciliation failed", run_id=str(run_id))
            raise
        async with self._pool.acquire() as conn, conn.transaction():
            await repo.finish_run(
                conn, run_id, payments=payments, refunds=refunds, mismatches=mismatches
            )
        for m in mismatches:
            log.warning(
                "reconciliation mismatch",
                run_id=str(run_id),
                kind=m.kind,
                stripe_id=m.stripe_id,
                purchase_id=m.purchase_id,
                tenant_id=str(m.tenant_id) if m.tenant_id else None,
                detail=m.detail,
            )
        log.info(
            "reconciliation done",
            run_id=str(run_id),
            payments=payments,
            refunds=refunds,
            mismatches=len(mismatches),
        )
        return await self.get(run_id)

    async def _compare(self, start: datetime, end: datetime) -> tuple[int, int, list[MismatchIn]]:
        stripe = self._runtime.stripe()
        gte, lt = int(start.timestamp()), int(end.timestamp())
        intents: dict[str, PaymentIntent] = {}
        async for intent in stripe.payment_intents_created(gte, lt):
            if intent.status == "succeeded" and intent.metadata.tally_order_id:
                intents[intent.id] = intent
        refunds: dict[str, Refund] = {}
        async for refund in stripe.refunds_created(gte, lt):
            if refund.status == "succeeded":
                refunds[refund.id] = refund
        async with self._pool.acquire() as conn:
            purchased = {
                p.payment_intent: p
                for p in await repo.purchase_events_by_payment_intent(conn, list(intents))
                if p.payment_intent
            }
            recorded = await repo.purchase_events_recorded(conn, start, end)
            refunded = {r.refund_id: r for r in await repo.refund_events_by_id(conn, list(refunds))}
            refunds_recorded = await repo.refund_events_recorded(conn, start, end)
            # Refunds of payments made before the period: is the payment one of ours?
            earlier = [
                r.payment_intent
                for r in refunds.values()
                if r.payment_intent and r.payment_intent not in intents
            ]
            ours_earlier = {
                p.payment_intent
                for p in await repo.purchase_events_by_payment_intent(conn, earlier)
            }
        mismatches: list[MismatchIn] = []

        for intent in intents.values():
            logged = purchased.get(intent.id)
            if logged is None:
                mismatches.append(
                    MismatchIn(
                        kind="payment_not_credited",
                        detail=f"payment {intent.id} of {intent.amount_received} "
                        f"{intent.currency} succeeded but no credits were purchased",
                        tenant_id=_uuid(intent.metadata.tenant_id),
                        stripe_id=intent.id,
                        purchase_id=intent.metadata.tally_order_id,
                        expected_minor=intent.amount_received,
                    )
                )
            else:
                mismatches.extend(_purchase_differences(logged, intent))

        for logged in recorded:
            if logged.payment_intent in intents:
                continue
            mismatches.extend(await self._check_purchase_alone(logged))

        for refund in refunds.values():
            ours = refund.payment_intent in intents or refund.payment_intent in ours_earlier
            logged_refund = refunded.get(refund.id)
            if logged_refund is None:
                if ours:
                    mismatches.append(
                        MismatchIn(
                            kind="refund_not_applied",
                            detail=f"refund {refund.id} of {refund.amount} {refund.currency}"
                            " succeeded but no credits were taken back",
                            stripe_id=refund.id,
                            expected_minor=refund.amount,
                        )
                    )
                continue
            mismatches.extend(_refund_differences(logged_refund, refund))

        for logged_refund in refunds_recorded:
            if logged_refund.refund_id in refunds:
                continue
            mismatches.extend(await self._check_refund_alone(logged_refund))
        return len(intents), len(refunds), mismatches

    async def _check_purchase_alone(self, logged: LoggedPurchase) -> list[MismatchIn]:
        """A purchase credited in the period whose payment was not in Stripe's list for it."""
        missing = MismatchIn(
            kind="credited_without_payment",
            detail=f"purchase {logged.purchase_id} credited for payment "
            f"{logged.payment_intent}, which Stripe does not show as succeeded",
            tenant_id=logged.tenant_id,
            stripe_id=logged.payment_intent,
            purchase_id=logged.purchase_id,
            actual_minor=logged.paid_minor,
        )
        if not logged.payment_intent:
            return [missing]
        try:
            intent = await self._runtime.stripe().retrieve_payment_intent(logged.payment_intent)
        except StripeObjectMissing:
            return [missing]
        if intent.status != "succeeded":
            return [missing]
        return _purchase_differences(logged, intent)

    async def _check_refund_alone(self, logged: LoggedRefund) -> list[MismatchIn]:
        missing = MismatchIn(
            kind="refund_without_stripe",
            detail=f"credits taken back for refund {logged.refund_id}, which Stripe does not"
            " show as succeeded",
            tenant_id=logged.tenant_id,
            stripe_id=logged.refund_id,
            purchase_id=logged.purchase_id,
            actual_minor=logged.refunded_minor,
        )
        try:
            refund = await self._runtime.stripe().retrieve_refund(logged.refund_id)
        except StripeObjectMissing:
            return [missing]
        if refund.status != "succeeded":
            return [missing]
        return _refund_differences(logged, refund)


def _purchase_differences(logged: LoggedPurchase, intent: PaymentIntent) -> list[MismatchIn]:
    if logged.paid_minor == intent.amount_received and logged.currency == intent.currency:
        return []
    return [
        MismatchIn(
            kind="amount_mismatch",
            detail=f"payment {intent.id}: Stripe received {intent.amount_received} "
            f"{intent.currency}, the purchase records {logged.paid_minor} {logged.currency}",
            tenant_id=logged.tenant_id,
            stripe_id=intent.id,
            purchase_id=logged.purchase_id,
            expected_minor=intent.amount_received,
            actual_minor=logged.paid_minor,
        )
    ]


def _refund_differences(logged: LoggedRefund, refund: Refund) -> list[MismatchIn]:
    if logged.refunded_minor == refund.amount and logged.currency == refund.currency:
        return []
    return [
        MismatchIn(
            kind="refund_amount_mismatch",
            detail=f"refund {refund.id}: Stripe refunded {refund.amount} {refund.currency}, "
            f"the log took back {logged.refunded_minor} {logged.currency}",
            tenant_id=logged.tenant_id,
            stripe_id=refund.id,
            purchase_id=logged.purchase_id,
            expected_minor=refund.amount,
            actual_minor=logged.refunded_minor,
        )
    ]


def _uuid(text: str | None) -> UUID | None:
    try:
        return UUID(text) if text else None
    except ValueError:
        return None


def yesterday() -> tuple[datetime, datetime]:
    """The previous UTC day, [00:00, 24:00)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=1), today
