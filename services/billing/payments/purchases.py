"""Turning payment facts into money events, exactly once.

Every function here runs inside the caller's transaction, after the caller took the tenant's
payments lock and the order's row lock. Each event carries an idempotency key made of Stripe's
or our own ids, so even a second path racing past the row checks cannot append it twice:

    purchase:<order id>                   CreditsPurchased (one per Checkout Session / top-up)
    refund:<re_...>                       CreditsRefunded (one per Stripe refund)
    dispute:<dp_...>:frozen / :closed     CreditsFrozen / CreditsUnfrozen
    payment-failed:<order id>             PaymentFailed
    autotopup-disabled:<order id>         AutoTopupDisabled
"""

from __future__ import annotations

import uuid
from decimal import Decimal, localcontext
from typing import Any, Literal
from uuid import UUID

from billing.alerts.service import queue_webhook
from billing.payments import repository as repo
from billing.payments.currency import format_minor
from billing.payments.repository import OrderRow
from tally.db import Connection
from tally.eventlog import Event, NewEvent, append_events
from tally.events.billing import (
    AutoTopupDisabled,
    CreditsFrozen,
    CreditsPurchased,
    CreditsRefunded,
    CreditsUnfrozen,
    PaymentFailed,
)
from tally.log import get_logger
from tally.money import EXACT, format_credits, round_nano

log = get_logger(__name__)


def purchase_key(order_id: UUID) -> str:
    return f"purchase:{order_id}"


def share_nano(amount_nano: int, paid_minor: int, part_minor: int) -> int:
    """The credits bought by `part_minor` of a `paid_minor` payment, rounded once (half-up).

    Refunds use it on the cumulative refunded amount and take the difference, so two partial
    refunds of 1/3 and 2/3 remove exactly the purchase, never a nano more or less.
    """
    if paid_minor <= 0:
        return amount_nano
    part = max(0, min(part_minor, paid_minor))
    with localcontext(EXACT):
        return round_nano(Decimal(amount_nano) * part / paid_minor)


async def _append(conn: Connection, event: Event, key: str) -> bool:
    """True when appended now, False when the key was already in the log."""
    (stored,) = await append_events(conn, [NewEvent(event, key)])
    return not stored.duplicate


async def credit_order(
    conn: Connection,
    order: OrderRow,
    *,
    paid_minor: int,
    currency: str,
    payment_intent: str | None,
    charge: str | None,
    session_id: str | None,
    method_kind: str | None,
) -> bool:
    """Append CreditsPurchased for a paid order, once. Returns False if it was credited before."""
    if order.credited_at is not None:
        return False
    if currency and currency != order.currency:
        log.error("payment currency differs from the order", order_id=str(order.id), paid=currency)
    source: Literal["checkout", "auto_topup"] = (
        "auto_topup" if order.source == "auto_topup" else "checkout"
    )
    event = CreditsPurchased(
        tenant_id=order.tenant_id,
        purchase_id=str(order.id),
        amount_nano=order.amount_nano,
        paid_minor=paid_minor,
        currency=currency or order.currency,
        source=source,
        stripe_payment_intent=payment_intent,
        pack_id=str(order.pack_id) if order.pack_id else None,
        stripe_checkout_session=session_id,
        payment_method_kind=method_kind,
    )
    appended = await _append(conn, event, purchase_key(order.id))
    if payment_intent:
        await repo.link_payment_intent(conn, order.id, payment_intent, charge)
    await repo.mark_order_credited(conn, order.id, paid_minor)
    log.info(
        "credits purchased",
        tenant_id=str(order.tenant_id),
        order_id=str(order.id),
        credits=order.credits,
        paid_minor=paid_minor,
        currency=event.currency,
        source=source,
        appended=appended,
    )
    return appended


async def refund_order(
    conn: Connection,
    order: OrderRow,
    *,
    refund_id: str,
    refund_minor: int,
    currency: str,
    charge: str | None,
) -> OrderRow:
    """Append CreditsRefunded for one Stripe refund of a credited order; returns the new order.

    The balance may go negative (credits already spent): that is the fold's and gateway's
    business (402 until positive), not a reason to take back less.
    """
    assert order.credited_at is not None
    assert order.paid_minor is not None
    if await repo.refund_applied(conn, refund_id):
        return order
    refunded_minor = order.refunded_minor + refund_minor
    refunded_nano = share_nano(order.amount_nano, order.paid_minor, refunded_minor)
    delta_nano = refunded_nano - order.refunded_nano
    event = CreditsRefunded(
        tenant_id=order.tenant_id,
        refund_id=refund_id,
        purchase_id=str(order.id),
        amount_nano=delta_nano,
        refunded_minor=refund_minor,
        currency=currency,
        stripe_charge=charge,
    )
    await _append(conn, event, f"refund:{refund_id}")
    await repo.insert_refund(
        conn,
        refund_id=refund_id,
        order_id=order.id,
        tenant_id=order.tenant_id,
        amount_minor=refund_minor,
        amount_nano=delta_nano,
        currency=currency,
    )
    await repo.add_order_refund(conn, order.id, refund_minor, delta_nano)
    log.info(
        "credits refunded",
        tenant_id=str(order.tenant_id),
        order_id=str(order.id),
        refund_id=refund_id,
        refund_minor=refund_minor,
        amount_nano=delta_nano,
    )
    locked = await repo.lock_order(conn, order.id)
    assert locked is not None
    return locked


async def freeze_for_dispute(
    conn: Connection, order: OrderRow, *, dispute_id: str, disputed_minor: int, currency: str
) -> repo.DisputeRow:
    """Append CreditsFrozen for a new dispute (its share of the purchase, never more than left)."""
    assert order.credited_at is not None
    assert order.paid_minor is not None
    existing = await repo.lock_dispute(conn, dispute_id)
    if existing is not None:
        return existing
    held_elsewhere = await repo.frozen_nano_of_order(conn, order.id)
    left = max(0, order.amount_nano - order.refunded_nano - held_elsewhere)
    frozen = min(share_nano(order.amount_nano, order.paid_minor, disputed_minor), left)
    event = CreditsFrozen(
        tenant_id=order.tenant_id,
        dispute_id=dispute_id,
        purchase_id=str(order.id),
        amount_nano=frozen,
        disputed_minor=disputed_minor,
        currency=currency,
    )
    await _append(conn, event, f"dispute:{dispute_id}:frozen")
    await repo.insert_dispute(
        conn,
        dispute_id=dispute_id,
        order_id=order.id,
        tenant_id=order.tenant_id,
        disputed_minor=disputed_minor,
        frozen_nano=frozen,
    )
    log.warning(
        "payment disputed: credits frozen",
        tenant_id=str(order.tenant_id),
        order_id=str(order.id),
        dispute_id=dispute_id,
        frozen_nano=frozen,
    )
    return repo.DisputeRow(dispute_id, order.id, order.tenant_id, disputed_minor, frozen, None)


async def close_dispute(
    conn: Connection, dispute: repo.DisputeRow, outcome: Literal["won", "lost"]
) -> bool:
    """Append CreditsUnfrozen (won restores, lost removes the frozen credits), once."""
    if dispute.outcome is not None:
        return False
    event = CreditsUnfrozen(
        tenant_id=dispute.tenant_id,
        dispute_id=dispute.dispute_id,
        outcome=outcome,
        purchase_id=str(dispute.order_id),
        amount_nano=dispute.frozen_nano,
    )
    appended = await _append(conn, event, f"dispute:{dispute.dispute_id}:closed")
    await repo.close_dispute(conn, dispute.dispute_id, outcome)
    log.info(
        "dispute closed",
        tenant_id=str(dispute.tenant_id),
        dispute_id=dispute.dispute_id,
        outcome=outcome,
        amount_nano=dispute.frozen_nano,
    )
    return appended


async def fail_order(
    conn: Connection,
    order: OrderRow,
    *,
    code: str | None,
    reason: str,
    payment_intent: str | None,
) -> bool:
    """A payment failed: nothing is credited, the tenant is told; top-ups also switch off."""
    if order.credited_at is not None or order.status == "failed":
        return False
    await repo.mark_order_status(
        conn, order.id, "failed", failure_code=code, failure_message=reason
    )
    if payment_intent:
        await repo.link_payment_intent(conn, order.id, payment_intent, None)
    source: Literal["checkout", "auto_topup"] = (
        "auto_topup" if order.source == "auto_topup" else "checkout"
    )
    await _append(
        conn,
        PaymentFailed(
            tenant_id=order.tenant_id,
            purchase_id=str(order.id),
            source=source,
            amount_minor=order.price_minor,
            currency=order.currency,
            reason=reason,
            code=code,
            stripe_payment_intent=payment_intent,
        ),
        f"payment-failed:{order.id}",
    )
    amount = format_minor(order.price_minor, order.currency)
    credits = format_credits(order.amount_nano, places=9).rstrip("0").rstrip(".")
    kind: Literal["payment_failed", "auto_topup_failed"]
    if source == "auto_topup":
        disabled_reason = f"the automatic charge of {amount} failed: {reason}"
        await repo.disable_auto_topup(conn, order.tenant_id, disabled_reason)
        await _append(
            conn,
            AutoTopupDisabled(
                tenant_id=order.tenant_id, reason=disabled_reason, purchase_id=str(order.id)
            ),
            f"autotopup-disabled:{order.id}",
        )
        message = (
            f"Auto top-up of {credits} credits ({amount}) failed: {reason}. No credits were"
            " added and auto top-up is now off; turn it on again once your card is updated."
        )
        kind = "auto_topup_failed"
    else:
        message = f"Your payment of {amount} for {credits} credits failed: {reason}. No credits"
        message += " were added."
        kind = "payment_failed"
    await notify_tenant(
        conn,
        order.tenant_id,
        kind=kind,
        message=message,
        data={"order_id": str(order.id), "code": code, "amount_minor": order.price_minor},
        dedupe_key=f"{kind}:{order.id}",
    )
    return True


async def notify_tenant(
    conn: Connection,
    tenant_id: UUID,
    *,
    kind: Literal["payment_failed", "auto_topup_failed"],
    message: str,
    data: dict[str, Any],
    dedupe_key: str,
) -> bool:
    """Tell the tenant's admins, once per dedupe key: a row their API lists, a log line, and a
    signed webhook to the tenant's alert URL when it has one."""
    notification_id = uuid.uuid4()
    inserted = await repo.insert_notification(
        conn,
        notification_id=notification_id,
        tenant_id=tenant_id,
        kind=kind,
        message=message,
        data=data,
        dedupe_key=dedupe_key,
    )
    if inserted:
        log.warning("tenant notified", tenant_id=str(tenant_id), kind=kind, message=message)
        await queue_webhook(
            conn,
            tenant_id,
            notification_id=notification_id,
            kind=kind,
            data={"message": message, **data},
        )
    return inserted
