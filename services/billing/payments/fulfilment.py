"""Processing stored Stripe events: purchases, failures, refunds and disputes, exactly once.

Stripe delivers at least once and in no particular order. Each event is processed in two steps:
  1. *prepare*: read what it needs from Stripe itself (the PaymentIntent, a charge's refunds),
     outside any transaction, because the event is a snapshot and may be stale or early;
  2. *apply*: one transaction that locks the stored event, the tenant's payments lock and the
     order, applies the effect and marks the event processed.

Out-of-order deliveries are resolved by re-fetching, not by parking. A refund or dispute that
arrives before its purchase was credited finds the order through the PaymentIntent's metadata
(written at checkout) and, if Stripe says the payment succeeded, credits the purchase first
and then takes the refund or freezes the dispute, in the same transaction: the log always
reads purchase -> refund, the order in which the money really moved. The purchase event that
arrives later finds it credited and changes nothing. Parking was the alternative; it needs a
second trigger to un-park and leaves the refund unapplied while the purchase is missing, where
re-fetching is correct at once and needs only Stripe to answer (else the job is retried).

Refunds are read from Stripe's list of the charge's refunds rather than from `amount_refunded`
(cumulative, and stale in a late delivery): each refund applies once under its own id.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec
import structlog

from billing.payments import repository as repo
from billing.payments.metrics import STRIPE_EVENTS
from billing.payments.purchases import (
    close_dispute,
    credit_order,
    fail_order,
    freeze_for_dispute,
    refund_order,
)
from billing.payments.repository import OrderRow
from billing.payments.runtime import PaymentsRuntime
from billing.payments.stripe_objects import (
    Charge,
    CheckoutSession,
    Dispute,
    Metadata,
    PaymentIntent,
    Refund,
    from_stripe,
)
from billing.payments.stripe_objects import Event as StripeEvent
from tally.db import Connection
from tally.log import get_logger

log = get_logger(__name__)

FINISHED = ("processed", "ignored")
# Apply step: runs in the processing transaction, returns (status, outcome).
Apply = Callable[[Connection], Awaitable[tuple[str, str]]]

# Statuses of a closed dispute that give the money back to us (won); `lost` takes it.
_DISPUTE_RESTORED = frozenset({"won", "warning_closed", "prevented"})


def _ignore(reason: str) -> Apply:
    async def apply(_conn: Connection) -> tuple[str, str]:
        return "ignored", reason

    return apply


def _uuid(text: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(text) if text else None
    except ValueError:
        return None


class StripeEventProcessor:
    """Applies one stored Stripe event (by id); safe to run twice or concurrently."""

    def __init__(self, runtime: PaymentsRuntime) -> None:
        self._runtime = runtime
        self._pool = runtime.pool

    async def process(self, event_id: str) -> str:
        """Process the stored event `event_id`; returns its outcome. Raises to be retried."""
        async with self._pool.acquire() as conn:
            row = await repo.get_webhook_event(conn, event_id)
        if row is None:
            raise LookupError(f"no stored Stripe event {event_id}")
        if row.status in FINISHED:
            return f"already {row.status}"
        structlog.contextvars.bind_contextvars(stripe_event=event_id, stripe_event_type=row.type)
        try:
            event = msgspec.convert(row.payload, StripeEvent)
            apply = await self._prepare(event)
            async with self._pool.acquire() as conn, conn.transaction():
                locked = await repo.lock_webhook_event(conn, event_id)
                if locked is None or locked.status in FINISHED:
                    return "already processed"
                status, outcome = await apply(conn)
                await repo.finish_webhook_event(conn, event_id, status, outcome)
        except Exception as exc:
            STRIPE_EVENTS.labels(row.type, "failed").inc()
            log.exception("stripe event failed; it will be retried")
            async with self._pool.acquire() as conn:
                await repo.fail_webhook_event(conn, event_id, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            structlog.contextvars.unbind_contextvars("stripe_event", "stripe_event_type")
        STRIPE_EVENTS.labels(row.type, status).inc()
        log.info("stripe event processed", stripe_event=event_id, status=status, outcome=outcome)
        return outcome

    async def _prepare(self, event: StripeEvent) -> Apply:
        obj = event.data.object
        match event.type:
            case "checkout.session.completed" | "checkout.session.async_payment_succeeded":
                return await self._checkout_paid(event.type, from_stripe(obj, CheckoutSession))
            case "checkout.session.async_payment_failed":
                return await self._checkout_failed(from_stripe(obj, CheckoutSession))
            case "checkout.session.expired":
                return await self._checkout_expired(from_stripe(obj, CheckoutSession))
            case "payment_intent.succeeded":
                return await self._intent_succeeded(from_stripe(obj, PaymentIntent))
            case "payment_intent.payment_failed":
                return await self._intent_failed(from_stripe(obj, PaymentIntent))
            case "charge.refunded":
                charge = from_stripe(obj, Charge)
                return await self._refunds(charge.id, charge.payment_intent)
            case "refund.created" | "refund.updated" | "charge.refund.updated":
                refund = from_stripe(obj, Refund)
                if refund.charge is None:
                    return _ignore("refund without a charge")
                return await self._refunds(refund.charge, refund.payment_intent)
            case "charge.dispute.created" | "charge.dispute.closed":
                return await self._dispute(event.type, from_stripe(obj, Dispute))
        return _ignore(f"{event.type} is not used by Tally")

    # --- finding the order --------------------------------------------------------------------

    async def _order_of_session(self, session: CheckoutSession) -> OrderRow | None:
        async with self._pool.acquire() as conn:
            order = await repo.get_order_by_session(conn, session.id)
            if order is None:
                order_id = _uuid(session.metadata.tally_order_id)
                order = await repo.get_order(conn, order_id) if order_id else None
        return order if order and _belongs(order, session.metadata) else None

    async def _order_of_intent(
        self, payment_intent_id: str | None
    ) -> tuple[OrderRow | None, PaymentIntent | None]:
        """The order a PaymentIntent paid, and the PaymentIntent as Stripe has it now.

        The PaymentIntent is fetched unless the order is already credited: its metadata names
        the order when we have not linked it yet (a refund before the purchase), and its status
        says whether the payment really succeeded.
        """
        if not payment_intent_id:
            return None, None
        async with self._pool.acquire() as conn:
            order = await repo.get_order_by_payment_intent(conn, payment_intent_id)
        if order is not None and order.credited_at is not None:
            return order, None
        intent = await self._runtime.stripe().retrieve_payment_intent(payment_intent_id)
        if order is None:
            order_id = _uuid(intent.metadata.tally_order_id)
            if order_id is None:
                return None, intent
            async with self._pool.acquire() as conn:
                order = await repo.get_order(conn, order_id)
            if order is None or not _belongs(order, intent.metadata):
                return None, intent
        return order, intent

    async def _lock_credited(
        self, conn: Connection, order_id: uuid.UUID, intent: PaymentIntent | None
    ) -> OrderRow | None:
        """Lock the order, crediting it first if Stripe says it was paid; None if unpaid."""
        order = await repo.lock_order(conn, order_id)
        assert order is not None
        if order.credited_at is not None:
            return order
        if intent is None or intent.status != "succeeded":
            return None
        await credit_order(
            conn,
            order,
            paid_minor=intent.amount_received,
            currency=intent.currency,
            payment_intent=intent.id,
            charge=intent.latest_charge_id,
            session_id=order.stripe_session_id,
            method_kind=intent.payment_method_kind,
        )
        return await repo.lock_order(conn, order_id)

    # --- checkout sessions --------------------------------------------------------------------

    async def _checkout_paid(self, event_type: str, session: CheckoutSession) -> Apply:
        order = await self._order_of_session(session)
        if order is None:
            return _ignore("not a Tally checkout session")
        if session.payment_status != "paid":
            if event_type != "checkout.session.completed" or session.payment_status != "unpaid":
                return _ignore(f"payment_status {session.payment_status}")
            return self._awaiting_payment(order.id)
        intent: PaymentIntent | None = None
        needs_intent = order.credited_at is None or order.save_payment_method
        if needs_intent and session.payment_intent_id:
            intent = await self._runtime.stripe().retrieve_payment_intent(session.payment_intent_id)
        paid_minor = session.amount_total if session.amount_total is not None else 0
        if intent is not None and session.amount_total is None:
            paid_minor = intent.amount_received

        async def apply(conn: Connection) -> tuple[str, str]:
            await repo.lock_tenant_payments(conn, order.tenant_id)
            locked = await repo.lock_order(conn, order.id)
            assert locked is not None
            if paid_minor != locked.price_minor:
                log.warning(
                    "checkout paid a different amount than ordered",
                    order_id=str(order.id),
                    ordered=locked.price_minor,
                    paid=paid_minor,
                )
            credited = await credit_order(
                conn,
                locked,
                paid_minor=paid_minor,
                currency=session.currency or locked.currency,
                payment_intent=session.payment_intent_id,
                charge=intent.latest_charge_id if intent else None,
                session_id=session.id,
                method_kind=intent.payment_method_kind if intent else None,
            )
            if locked.save_payment_method and intent and intent.payment_method and intent.customer:
                # Saved by setup_future_usage=off_session: the card auto top-up will charge.
                await repo.store_payment_method(
                    conn,
                    locked.tenant_id,
                    intent.customer,
                    intent.payment_method,
                    intent.payment_method_kind,
                )
            return "processed", "credited" if credited else "already credited"

        return apply

    def _awaiting_payment(self, order_id: uuid.UUID) -> Apply:
        async def apply(conn: Connection) -> tuple[str, str]:
            await repo.mark_order_status(conn, order_id, "processing")
            return "processed", "awaiting a delayed payment"

        return apply

    async def _checkout_failed(self, session: CheckoutSession) -> Apply:
        order = await self._order_of_session(session)
        if order is None:
            return _ignore("not a Tally checkout session")

        async def apply(conn: Connection) -> tuple[str, str]:
            await repo.lock_tenant_payments(conn, order.tenant_id)
            locked = await repo.lock_order(conn, order.id)
            assert locked is not None
            failed = await fail_order(
                conn,
                locked,
                code="async_payment_failed",
                reason="the bank did not complete the payment",
                payment_intent=session.payment_intent_id,
            )
            return "processed", "payment failed, tenant notified" if failed else "already settled"

        return apply

    async def _checkout_expired(self, session: CheckoutSession) -> Apply:
        order = await self._order_of_session(session)
        if order is None:
            return _ignore("not a Tally checkout session")

        async def apply(conn: Connection) -> tuple[str, str]:
            changed = await repo.mark_order_status(conn, order.id, "expired")
            return "processed", "expired" if changed else "already settled"

        return apply

    # --- payment intents (auto top-up; also a second path for checkout payments) -------------

    async def _intent_succeeded(self, event_intent: PaymentIntent) -> Apply:
        order, intent = await self._order_of_intent(event_intent.id)
        if order is None:
            return _ignore("not a Tally payment")

        async def apply(conn: Connection) -> tuple[str, str]:
            await repo.lock_tenant_payments(conn, order.tenant_id)
            before = await repo.get_order(conn, order.id)
            credited = await self._lock_credited(conn, order.id, intent)
            if credited is None:
                return "processed", "payment not succeeded"
            fresh = before is not None and before.credited_at is None
            return "processed", "credited" if fresh else "already credited"

        return apply

    async def _intent_failed(self, event_intent: PaymentIntent) -> Apply:
        order, _ = await self._order_of_intent(event_intent.id)
        if order is None:
            return _ignore("not a Tally payment")
        if order.source != "auto_topup":
            # Checkout lets the customer try another card; the session's own events decide.
            return _ignore("a checkout attempt failed; the session decides")
        error = event_intent.last_payment_error

        async def apply(conn: Connection) -> tuple[str, str]:
            await repo.lock_tenant_payments(conn, order.tenant_id)
            locked = await repo.lock_order(conn, order.id)
            assert locked is not None
            failed = await fail_order(
                conn,
                locked,
                code=(error.decline_code or error.code) if error else None,
                reason=(error.message if error and error.message else "the card was declined"),
                payment_intent=event_intent.id,
            )
            return "processed", "top-up failed, turned off" if failed else "already settled"

        return apply

    # --- refunds ------------------------------------------------------------------------------

    async def _refunds(self, charge_id: str, payment_intent_id: str | None) -> Apply:
        if payment_intent_id is None:
            payment_intent_id = (
                await self._runtime.stripe().retrieve_charge(charge_id)
            ).payment_intent
        order, intent = await self._order_of_intent(payment_intent_id)
        if order is None:
            return _ignore("not a Tally payment")
        refunds = await self._runtime.stripe().refunds_of_charge(charge_id)

        async def apply(conn: Connection) -> tuple[str, str]:
            await repo.lock_tenant_payments(conn, order.tenant_id)
            locked = await self._lock_credited(conn, order.id, intent)
            if locked is None:
                return "ignored", "refund of a payment that never succeeded"
            applied = 0
            for refund in refunds:
                # Pending refunds wait for their refund.updated; failed ones never moved money.
                if refund.status != "succeeded" or await repo.refund_applied(conn, refund.id):
                    continue
                locked = await refund_order(
                    conn,
                    locked,
                    refund_id=refund.id,
                    refund_minor=refund.amount,
                    currency=refund.currency,
                    charge=charge_id,
                )
                applied += 1
            return "processed", f"{applied} refund(s) applied"

        return apply

    # --- disputes -----------------------------------------------------------------------------

    async def _dispute(self, event_type: str, dispute: Dispute) -> Apply:
        payment_intent_id = dispute.payment_intent
        if payment_intent_id is None and dispute.charge:
            charge = await self._runtime.stripe().retrieve_charge(dispute.charge)
            payment_intent_id = charge.payment_intent
        order, intent = await self._order_of_intent(payment_intent_id)
        if order is None:
            return _ignore("not a Tally payment")
        outcome: Literal["won", "lost"] | None = None
        if event_type == "charge.dispute.closed":
            if dispute.status == "lost":
                outcome = "lost"
            elif dispute.status in _DISPUTE_RESTORED:
                outcome = "won"

        async def apply(conn: Connection) -> tuple[str, str]:
            await repo.lock_tenant_payments(conn, order.tenant_id)
            locked = await self._lock_credited(conn, order.id, intent)
            if locked is None:
                return "ignored", "dispute of a payment that never succeeded"
            # A `closed` delivered before its `created` freezes first, then settles: the log
            # always reads frozen -> unfrozen.
            held = await freeze_for_dispute(
                conn,
                locked,
                dispute_id=dispute.id,
                disputed_minor=dispute.amount,
                currency=dispute.currency,
            )
            if outcome is None:
                return "processed", f"dispute {dispute.status}: credits frozen"
            closed = await close_dispute(conn, held, outcome)
            return "processed", f"dispute {outcome}" if closed else "dispute already closed"

        return apply


def _belongs(order: OrderRow, metadata: Metadata) -> bool:
    """The object's metadata names this order's tenant (a Stripe object never moves tenants)."""
    if metadata.tenant_id is not None and metadata.tenant_id != str(order.tenant_id):
        log.error(
            "stripe object's tenant differs from its order",
            order_id=str(order.id),
            metadata_tenant=metadata.tenant_id,
        )
        return False
    return True
