"""The ledger's words for payment events, as a customer would say them.

`describe_payment_event(event)` returns one sentence for each payment event (purchases, refunds,
disputes, failures, auto top-up) and None for any other event, so the billing ledger can call it
first and fall back to its own wording:

    Purchased 100 credits (card, $100.00)
    Auto top-up: 100 credits (card, $90.00)
    Refund of $25.00: 25 credits removed
    Payment disputed: 100 credits on hold until the dispute is resolved
    Dispute resolved in your favour: 100 credits released
    Dispute lost: 100 credits removed
    Payment of $100.00 failed (card declined): no credits added
    Auto top-up turned off: the automatic charge of $90.00 failed: card declined
"""

from __future__ import annotations

from billing.payments.currency import format_minor
from tally.eventlog import Event
from tally.events.billing import (
    AutoTopupConfigured,
    AutoTopupDisabled,
    CreditsFrozen,
    CreditsPurchased,
    CreditsRefunded,
    CreditsUnfrozen,
    PaymentFailed,
)
from tally.money import format_credits

_METHOD_NAMES = {
    "card": "card",
    "link": "Link",
    "sepa_debit": "SEPA Direct Debit",
    "us_bank_account": "bank account",
    "paypal": "PayPal",
}


def credits_text(nano: int) -> str:
    """Nano-credits as people read them: 100, 12.5, 0.000000001 (no trailing zeros)."""
    text = format_credits(abs(nano), places=9)
    text = text.rstrip("0").rstrip(".") if "." in text else text
    word = "credit" if text == "1" else "credits"
    return f"{text} {word}"


def describe_payment_event(event: Event) -> str | None:
    """One customer-facing sentence for a payment event; None if `event` is not one."""
    match event:
        case CreditsPurchased():
            paid = format_minor(event.paid_minor, event.currency)
            how = _METHOD_NAMES.get(event.payment_method_kind or "", event.payment_method_kind)
            detail = f"{how}, {paid}" if how else paid
            if event.source == "auto_topup":
                return f"Auto top-up: {credits_text(event.amount_nano)} ({detail})"
            if event.source == "manual":
                return f"Purchased {credits_text(event.amount_nano)} ({paid}, recorded by us)"
            return f"Purchased {credits_text(event.amount_nano)} ({detail})"
        case CreditsRefunded():
            refunded = format_minor(event.refunded_minor, event.currency)
            return f"Refund of {refunded}: {credits_text(event.amount_nano)} removed"
        case CreditsFrozen():
            return (
                f"Payment disputed: {credits_text(event.amount_nano)} on hold until the dispute"
                " is resolved"
            )
        case CreditsUnfrozen():
            amount = credits_text(event.amount_nano) if event.amount_nano is not None else None
            if event.outcome == "won":
                released = f"{amount} released" if amount else "credits released"
                return f"Dispute resolved in your favour: {released}"
            removed = f"{amount} removed" if amount else "the held credits were removed"
            return f"Dispute lost: {removed}"
        case PaymentFailed():
            amount = format_minor(event.amount_minor, event.currency)
            what = "Auto top-up" if event.source == "auto_topup" else "Payment"
            reason = (event.code or "").replace("_", " ") or event.reason
            return f"{what} of {amount} failed ({reason}): no credits added"
        case AutoTopupDisabled():
            return f"Auto top-up turned off: {event.reason}"
        case AutoTopupConfigured():
            if not event.enabled:
                return "Auto top-up turned off"
            return f"Auto top-up turned on below {credits_text(event.threshold_nano)}"
    return None
