from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx

from billing.payments.runtime import PaymentsRuntime
from tally.config import Settings
from tally.money import credits_to_nano
from tests.fakes.stripe_api import FakeStripe, WebhookSender
from tests.integration.payments.conftest import (
    Tenants,
    buy,
    deliver,
    deliver_and_process,
    money_events,
    operator,
    process,
)


async def bought(
    billing: httpx.AsyncClient,
    settings: Settings,
    fake: FakeStripe,
    tenant: Any,
    *,
    credits: int,
    price: str,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A pack bought and paid at Stripe; its events are returned, not yet delivered."""
    response = await billing.post(
        "/billing/packs",
        json={"name": f"{credits} for {price}", "credits": credits, "price": price},
        headers=operator(settings),
    )
    assert response.status_code == 201, response.text
    created = await buy(billing, settings, tenant, pack_id=response.json()["id"])
    return created, fake.complete_checkout(created["session_id"])


def of_type(events: list[dict[str, Any]], *types: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] in types]


async def test_partial_refunds_take_back_their_share_and_add_up_to_the_purchase_exactly(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    created, events = await bought(
        billing, payment_settings, fake_stripe, tenant, credits=7, price="9.99"
    )
    await deliver_and_process(billing, sender, runtime, events)
    charge = fake_stripe.charge_of(created["session_id"])["id"]

    refunded = []
    for _ in range(3):
        refund_events = fake_stripe.refund(charge, 333)
        await deliver_and_process(billing, sender, runtime, refund_events)
        refunded.append(refund_events)

    log = await money_events(pool, tenant)
    assert [kind for kind, _, _ in log] == ["CreditsPurchased"] + ["CreditsRefunded"] * 3
    refunds = [data for _, _, data in log[1:]]
    # 7 credits bought for 999 cents; each third is rounded once on the cumulative share.
    assert [r["amount_nano"] for r in refunds] == [2_333_333_333, 2_333_333_334, 2_333_333_333]
    assert sum(r["amount_nano"] for r in refunds) == credits_to_nano(7)
    assert [r["refunded_minor"] for r in refunds] == [333, 333, 333]
    stripe_refunds = [fake_stripe.refunds[r["refund_id"]] for r in refunds]
    assert [r["charge"] for r in stripe_refunds] == [charge] * 3
    assert [key for _, key, _ in log[1:]] == [f"refund:{r['refund_id']}" for r in refunds]


async def test_a_refund_delivered_before_its_purchase_credits_first_then_refunds_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    created, purchase_events = await bought(
        billing, payment_settings, fake_stripe, tenant, credits=50, price="50.00"
    )
    charge = fake_stripe.charge_of(created["session_id"])["id"]
    refund_events = fake_stripe.refund(charge, 2000)

    # Stripe delivers the refund first; the purchase events arrive afterwards.
    assert await deliver_and_process(billing, sender, runtime, refund_events) == [
        "1 refund(s) applied",
        "0 refund(s) applied",
    ]
    outcomes = await deliver_and_process(billing, sender, runtime, purchase_events)
    assert "credited" not in outcomes

    log = await money_events(pool, tenant)
    assert [(kind, key.split(":")[0]) for kind, key, _ in log] == [
        ("CreditsPurchased", "purchase"),
        ("CreditsRefunded", "refund"),
    ]
    purchase, refund = log[0][2], log[1][2]
    assert purchase["amount_nano"] == credits_to_nano(50)
    assert purchase["purchase_id"] == created["order_id"]
    assert (refund["amount_nano"], refund["refunded_minor"]) == (credits_to_nano(20), 2000)
    assert refund["purchase_id"] == created["order_id"]


async def test_refund_events_out_of_order_and_duplicated_apply_each_refund_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    created, events = await bought(
        billing, payment_settings, fake_stripe, tenant, credits=100, price="100.00"
    )
    await deliver_and_process(billing, sender, runtime, events)
    charge = fake_stripe.charge_of(created["session_id"])["id"]
    first = fake_stripe.refund(charge, 1000)
    second = fake_stripe.refund(charge, 2500)

    # The later charge.refunded (cumulative 3500) arrives first, then everything twice, at once.
    later_first = of_type(second, "charge.refunded") + of_type(first, "charge.refunded")
    await deliver(billing, sender, later_first + of_type(first + second, "refund.created"))
    await asyncio.gather(*(process(runtime, first + second) for _ in range(3)))

    refunds = [
        data for kind, _, data in await money_events(pool, tenant) if kind == "CreditsRefunded"
    ]
    assert sorted(r["refunded_minor"] for r in refunds) == [1000, 2500]
    assert sum(r["amount_nano"] for r in refunds) == credits_to_nano(35)


async def test_a_won_dispute_freezes_then_restores_the_credits(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    created, events = await bought(
        billing, payment_settings, fake_stripe, tenant, credits=100, price="80.00"
    )
    await deliver_and_process(billing, sender, runtime, events)
    charge = fake_stripe.charge_of(created["session_id"])["id"]

    opened = fake_stripe.open_dispute(charge)
    assert await deliver_and_process(billing, sender, runtime, opened) == [
        "dispute needs_response: credits frozen"
    ]
    dispute_id = opened[0]["data"]["object"]["id"]
    closed = fake_stripe.close_dispute(dispute_id, won=True)
    assert await deliver_and_process(billing, sender, runtime, closed + closed) == [
        "dispute won",
        "already processed",
    ]

    log = await money_events(pool, tenant)
    assert [(kind, key) for kind, key, _ in log[1:]] == [
        ("CreditsFrozen", f"dispute:{dispute_id}:frozen"),
        ("CreditsUnfrozen", f"dispute:{dispute_id}:closed"),
    ]
    frozen, unfrozen = log[1][2], log[2][2]
    assert (frozen["amount_nano"], frozen["purchase_id"]) == (
        credits_to_nano(100),
        created["order_id"],
    )
    assert (unfrozen["outcome"], unfrozen["amount_nano"]) == ("won", credits_to_nano(100))


async def test_a_lost_partial_dispute_removes_its_share(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    created, events = await bought(
        billing, payment_settings, fake_stripe, tenant, credits=100, price="80.00"
    )
    await deliver_and_process(billing, sender, runtime, events)
    charge = fake_stripe.charge_of(created["session_id"])["id"]
    opened = fake_stripe.open_dispute(charge, amount=2000)  # a quarter of the payment
    closed = fake_stripe.close_dispute(opened[0]["data"]["object"]["id"], won=False)

    await deliver_and_process(billing, sender, runtime, opened + closed)

    log = await money_events(pool, tenant)
    assert [kind for kind, _, _ in log] == ["CreditsPurchased", "CreditsFrozen", "CreditsUnfrozen"]
    assert log[1][2]["amount_nano"] == credits_to_nano(25)
    assert (log[2][2]["outcome"], log[2][2]["amount_nano"]) == ("lost", credits_to_nano(25))


async def test_a_dispute_closed_before_it_was_opened_still_reads_freeze_then_settle(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    created, events = await bought(
        billing, payment_settings, fake_stripe, tenant, credits=10, price="10.00"
    )
    charge = fake_stripe.charge_of(created["session_id"])["id"]
    opened = fake_stripe.open_dispute(charge)
    closed = fake_stripe.close_dispute(opened[0]["data"]["object"]["id"], won=False)

    # Worst order: the close, then the open, then the purchase itself.
    await deliver_and_process(billing, sender, runtime, closed + opened + events)

    log = await money_events(pool, tenant)
    assert [kind for kind, _, _ in log] == ["CreditsPurchased", "CreditsFrozen", "CreditsUnfrozen"]
    assert log[2][2]["outcome"] == "lost"
