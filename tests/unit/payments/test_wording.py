from __future__ import annotations

import uuid

import pytest

from billing.payments.wording import describe_payment_event
from tally.eventlog import Event
from tally.events.billing import (
    AutoTopupDisabled,
    CreditsFrozen,
    CreditsGranted,
    CreditsPurchased,
    CreditsRefunded,
    CreditsUnfrozen,
    PaymentFailed,
)
from tally.events.tenant import Actor

T = uuid.uuid4()
NANO = 10**9


def purchase(**overrides: object) -> CreditsPurchased:
    fields: dict[str, object] = {
        "tenant_id": T,
        "purchase_id": "p1",
        "amount_nano": 100 * NANO,
        "paid_minor": 10000,
        "currency": "usd",
        "source": "checkout",
        "payment_method_kind": "card",
    }
    fields.update(overrides)
    return CreditsPurchased(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "words"),
    [
        (purchase(), "Purchased 100 credits (card, $100.00)"),
        (purchase(payment_method_kind=None), "Purchased 100 credits ($100.00)"),
        (
            purchase(source="auto_topup", paid_minor=9000),
            "Auto top-up: 100 credits (card, $90.00)",
        ),
        (
            purchase(amount_nano=NANO, paid_minor=1000, currency="eur"),
            "Purchased 1 credit (card, €10.00)",
        ),
        (
            purchase(amount_nano=12_500_000_000, paid_minor=1500, currency="jpy"),
            "Purchased 12.5 credits (card, ¥1,500)",
        ),
        (
            CreditsRefunded(
                tenant_id=T,
                refund_id="re_1",
                purchase_id="p1",
                amount_nano=25 * NANO,
                refunded_minor=2500,
                currency="usd",
            ),
            "Refund of $25.00: 25 credits removed",
        ),
        (
            CreditsFrozen(tenant_id=T, dispute_id="dp", purchase_id="p1", amount_nano=100 * NANO),
            "Payment disputed: 100 credits on hold until the dispute is resolved",
        ),
        (
            CreditsUnfrozen(tenant_id=T, dispute_id="dp", outcome="won", amount_nano=100 * NANO),
            "Dispute resolved in your favour: 100 credits released",
        ),
        (
            CreditsUnfrozen(tenant_id=T, dispute_id="dp", outcome="lost", amount_nano=100 * NANO),
            "Dispute lost: 100 credits removed",
        ),
        (
            PaymentFailed(
                tenant_id=T,
                purchase_id="p1",
                source="checkout",
                amount_minor=10000,
                currency="usd",
                reason="the bank did not complete the payment",
                code="async_payment_failed",
            ),
            "Payment of $100.00 failed (async payment failed): no credits added",
        ),
        (
            AutoTopupDisabled(tenant_id=T, reason="the automatic charge of $90.00 failed"),
            "Auto top-up turned off: the automatic charge of $90.00 failed",
        ),
    ],
)
def test_each_payment_event_reads_as_a_customer_sentence(event: Event, words: str) -> None:
    assert describe_payment_event(event) == words


def test_other_events_are_left_to_the_ledger() -> None:
    grant = CreditsGranted(
        tenant_id=T,
        grant_id=uuid.uuid4(),
        amount_nano=NANO,
        kind="manual",
        reason="welcome",
        actor=Actor(kind="cli"),
    )
    assert describe_payment_event(grant) is None
