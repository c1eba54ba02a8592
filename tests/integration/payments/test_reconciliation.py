from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import redis.asyncio as redis

from billing.payments import tasks
from billing.payments.runtime import PaymentsRuntime
from tally.config import Settings
from tally.eventlog import NewEvent, append_events
from tally.events.billing import CreditsPurchased
from tests.fakes.stripe_api import FakeStripe, WebhookSender
from tests.integration.payments.conftest import (
    Tenants,
    buy,
    deliver_and_process,
    operator,
    token,
)

# One window for the whole module: computing it twice could straddle a second and disagree.
_NOW = datetime.now(UTC)


def period() -> dict[str, str]:
    now = _NOW
    return {
        "period_start": (now - timedelta(hours=1)).isoformat(),
        "period_end": (now + timedelta(hours=1)).isoformat(),
    }


async def reconcile_via_api(
    billing: httpx.AsyncClient,
    settings: Settings,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> dict[str, Any]:
    queued = await billing.post(
        "/billing/reconciliation/runs", json=period(), headers=operator(settings)
    )
    assert queued.status_code == 202, queued.text
    assert queued.json()["status"] == "queued"
    run_id = queued.json()["id"]
    ctx = {"pool": pool, "settings": settings, "redis": redis_client}
    await tasks.reconcile(ctx, run_id)  # what the worker runs for the queued job
    finance = token(settings, roles=frozenset({"finance"}))
    report = await billing.get(f"/billing/reconciliation/runs/{run_id}", headers=finance)
    assert report.status_code == 200
    result: dict[str, Any] = report.json()
    return result


async def test_a_clean_period_reconciles_with_no_mismatch_across_pages(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant = await tenants.create()
    created = await buy(billing, payment_settings, tenant, credits=30)
    await deliver_and_process(
        billing, sender, runtime, fake_stripe.complete_checkout(created["session_id"])
    )
    charge = fake_stripe.charge_of(created["session_id"])["id"]
    await deliver_and_process(billing, sender, runtime, fake_stripe.refund(charge, 500))
    # 250 payments of someone else's integration, newer than ours: ours sit on page 3.
    later = fake_stripe.clock() + 1
    fake_stripe.clock = lambda: later
    for _ in range(250):
        intent = fake_stripe._intent(
            amount=100, currency="usd", customer=None, metadata={}, payment_method=None
        )
        fake_stripe._charge(intent)

    report = await reconcile_via_api(billing, payment_settings, pool, redis_client)

    assert report["status"] == "done"
    assert (report["stripe_payments"], report["stripe_refunds"]) == (1, 1)
    assert report["mismatch_count"] == 0
    assert report["mismatches"] == []
    pages = [
        r for r in fake_stripe.requests if (r.method, r.path) == ("GET", "/v1/payment_intents")
    ]
    assert len(pages) == 3
    assert pages[1].params["starting_after"]
    assert pages[0].params["created"] == {
        "gte": str(int(datetime.fromisoformat(period()["period_start"]).timestamp())),
        "lt": pages[0].params["created"]["lt"],
    }


async def test_every_kind_of_difference_is_reported_to_operators(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant = await tenants.create()
    # 1. Paid at Stripe, webhook never arrived: not credited.
    lost = await buy(billing, payment_settings, tenant, credits=10)
    fake_stripe.complete_checkout(lost["session_id"])
    lost_intent = fake_stripe.payment_intent_of(lost["session_id"])["id"]
    # 2. Credited and then refunded at Stripe, the refund's webhook never arrived.
    refunded = await buy(billing, payment_settings, tenant, credits=20)
    await deliver_and_process(
        billing, sender, runtime, fake_stripe.complete_checkout(refunded["session_id"])
    )
    fake_stripe.refund(fake_stripe.charge_of(refunded["session_id"])["id"], 700)
    # 3. Credited with a wrong amount, and 4. credited for a payment Stripe never saw.
    wrong = await buy(billing, payment_settings, tenant, credits=5)
    fake_stripe.complete_checkout(wrong["session_id"])
    wrong_intent = fake_stripe.payment_intent_of(wrong["session_id"])["id"]
    async with pool.acquire() as conn, conn.transaction():
        for purchase_id, intent, paid in (
            (wrong["order_id"], wrong_intent, 499),
            (str(uuid.uuid4()), "pi_never_existed", 1234),
        ):
            event = CreditsPurchased(
                tenant_id=tenant,
                purchase_id=purchase_id,
                amount_nano=5 * 10**9,
                paid_minor=paid,
                currency="usd",
                source="checkout",
                stripe_payment_intent=intent,
            )
            await append_events(conn, [NewEvent(event, f"purchase:{purchase_id}")])

    report = await reconcile_via_api(billing, payment_settings, pool, redis_client)

    found = {(m["kind"], m["stripe_id"]) for m in report["mismatches"]}
    (refund_id,) = fake_stripe.refunds
    assert found == {
        ("payment_not_credited", lost_intent),
        ("refund_not_applied", refund_id),
        ("amount_mismatch", wrong_intent),
        ("credited_without_payment", "pi_never_existed"),
    }
    assert report["mismatch_count"] == 4
    mismatch = next(m for m in report["mismatches"] if m["kind"] == "amount_mismatch")
    assert (mismatch["expected_minor"], mismatch["actual_minor"]) == (500, 499)
    assert mismatch["tenant_id"] == str(tenant)
    listed = await billing.get("/billing/reconciliation/runs", headers=operator(payment_settings))
    assert [r["mismatch_count"] for r in listed.json()["data"]] == [4]


async def test_a_purchase_credited_just_after_the_period_start_is_not_a_mismatch(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant = await tenants.create()
    created = await buy(billing, payment_settings, tenant, credits=10)
    # Paid two hours ago at Stripe (before the period), credited now (inside it).
    earlier = int(time.time()) - 2 * 3600
    fake_stripe.clock = lambda: earlier
    events = fake_stripe.complete_checkout(created["session_id"])
    fake_stripe.clock = lambda: int(time.time())
    await deliver_and_process(billing, sender, runtime, events)

    report = await reconcile_via_api(billing, payment_settings, pool, redis_client)

    assert (report["stripe_payments"], report["mismatch_count"]) == (0, 0)
