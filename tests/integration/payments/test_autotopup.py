from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import redis.asyncio as redis

from billing.payments.autotopup import AutoTopups
from billing.payments.runtime import PaymentsRuntime
from tally.config import Settings
from tally.live_balance import LiveBalances, fold_consumer_name
from tally.money import credits_to_nano
from tests.fakes.stripe_api import CARD_DECLINED, CARD_OK, FakeStripe, WebhookSender
from tests.integration.payments.conftest import (
    Tenants,
    admin_of,
    buy,
    deliver_and_process,
    money_events,
    operator,
)

THRESHOLD = 50


async def fold(
    pool: asyncpg.Pool, redis_client: redis.Redis, tenant: uuid.UUID, balance_credits: int
) -> None:
    """Pretend billing's fold applied every event so far and left `balance_credits`."""
    async with pool.acquire() as conn:
        folded = await conn.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", tenant)
        await conn.execute(
            "INSERT INTO balances (tenant_id, balance_nano, folded_events) VALUES ($1, $2, $3)"
            " ON CONFLICT (tenant_id) DO UPDATE"
            " SET balance_nano = EXCLUDED.balance_nano, folded_events = EXCLUDED.folded_events",
            tenant,
            credits_to_nano(balance_credits),
            folded,
        )
        last = await conn.fetchrow(
            "SELECT txid::text AS txid, position FROM events ORDER BY txid DESC, position DESC"
            " LIMIT 1"
        )
        await conn.execute(
            "INSERT INTO consumer_checkpoints (consumer, txid, position)"
            " VALUES ($1, $2::text::xid8, $3) ON CONFLICT (consumer) DO UPDATE"
            " SET txid = EXCLUDED.txid, position = EXCLUDED.position",
            fold_consumer_name(0, 1),
            last["txid"],
            last["position"],
        )
    live = LiveBalances(redis_client)
    await live.forget(tenant)
    await live.load(tenant, seq=folded, balance_nano=credits_to_nano(balance_credits), unfolded={})


async def opted_in(
    billing: httpx.AsyncClient,
    settings: Settings,
    fake: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    *,
    card: str = CARD_OK,
) -> tuple[uuid.UUID, dict[str, Any]]:
    """A tenant that bought once saving its card, and turned auto top-up on."""
    tenant = await tenants.create()
    response = await billing.post(
        "/billing/packs",
        json={"name": f"Refill {uuid.uuid4().hex[:6]}", "credits": 100, "price": "90.00"},
        headers=operator(settings),
    )
    pack = response.json()
    created = await buy(billing, settings, tenant, credits=10, save_payment_method=True)
    await deliver_and_process(
        billing, sender, runtime, fake.complete_checkout(created["session_id"], card=card)
    )
    response = await billing.put(
        f"/billing/tenants/{tenant}/auto-topup",
        json={"enabled": True, "threshold_credits": THRESHOLD, "pack_id": pack["id"]},
        headers=admin_of(settings, tenant),
    )
    assert response.status_code == 200, response.text
    assert response.json()["payment_method_saved"] is True
    return tenant, pack


def topup_requests(fake: FakeStripe) -> list[Any]:
    return fake.requests_to("POST", "/v1/payment_intents")


async def test_below_the_threshold_the_saved_card_is_charged_off_session_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant, pack = await opted_in(billing, payment_settings, fake_stripe, sender, runtime, tenants)
    topups = AutoTopups(runtime)
    await fold(pool, redis_client, tenant, 60)
    assert (await topups.check(tenant)).outcome == "above threshold"

    await fold(pool, redis_client, tenant, 49)
    result = await topups.check(tenant)
    assert result.outcome == "charged"
    # The new credits count at once, before any fold: no second charge.
    assert (await topups.check(tenant)).outcome == "above threshold"

    (request,) = topup_requests(fake_stripe)
    assert request.idempotency_key == f"tally:topup:{result.order_id}"
    customer = next(iter(fake_stripe.customers))
    assert request.params["customer"] == customer
    assert (request.params["off_session"], request.params["confirm"]) == ("true", "true")
    assert request.params["amount"] == "9000"
    assert request.params["metadata"]["tally_order_id"] == str(result.order_id)
    saved = fake_stripe.payment_intent_of(next(iter(fake_stripe.sessions)))["payment_method"]
    assert request.params["payment_method"] == saved

    purchase = [d for kind, _, d in await money_events(pool, tenant) if kind == "CreditsPurchased"]
    assert [(p["source"], p["amount_nano"], p["paid_minor"]) for p in purchase] == [
        ("checkout", credits_to_nano(10), 1000),
        ("auto_topup", credits_to_nano(100), 9000),
    ]
    assert purchase[1]["pack_id"] == pack["id"]

    # Stripe's own payment_intent.succeeded webhook for it changes nothing.
    intent_events = [
        e for e in fake_stripe.events.values() if e["type"] == "payment_intent.succeeded"
    ]
    await deliver_and_process(billing, sender, runtime, intent_events)
    assert len(await money_events(pool, tenant)) == 2


async def test_at_most_n_top_ups_a_day(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant, _ = await opted_in(billing, payment_settings, fake_stripe, sender, runtime, tenants)
    topups = AutoTopups(runtime)
    outcomes = []
    for _ in range(4):
        await fold(pool, redis_client, tenant, 0)  # spent everything again
        outcomes.append((await topups.check(tenant)).outcome)
    assert payment_settings.autotopup_max_per_day == 2
    assert outcomes == ["charged", "charged", "daily limit reached", "daily limit reached"]
    assert len(topup_requests(fake_stripe)) == 2


async def test_concurrent_triggers_charge_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant, _ = await opted_in(billing, payment_settings, fake_stripe, sender, runtime, tenants)
    await fold(pool, redis_client, tenant, 1)
    results = await asyncio.gather(*(AutoTopups(runtime).check(tenant) for _ in range(10)))
    assert sorted(r.outcome for r in results).count("charged") == 1
    assert len(topup_requests(fake_stripe)) == 1
    kinds = [d["source"] for k, _, d in await money_events(pool, tenant) if k == "CreditsPurchased"]
    assert kinds == ["checkout", "auto_topup"]


async def test_a_manual_purchase_not_yet_folded_stops_the_top_up(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant, _ = await opted_in(billing, payment_settings, fake_stripe, sender, runtime, tenants)
    await fold(pool, redis_client, tenant, 5)
    manual = await buy(billing, payment_settings, tenant, credits=200)
    await deliver_and_process(
        billing, sender, runtime, fake_stripe.complete_checkout(manual["session_id"])
    )
    # The live balance still says 5 credits: the fold has not run since the purchase.
    snapshot = await LiveBalances(redis_client).snapshot(tenant)
    assert snapshot is not None
    assert snapshot.available_nano == credits_to_nano(5)

    result = await AutoTopups(runtime).check(tenant)

    assert (result.outcome, result.available_nano) == ("above threshold", credits_to_nano(205))
    assert topup_requests(fake_stripe) == []


async def test_a_top_up_racing_a_manual_purchase_charges_at_most_once_and_only_when_due(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant, _ = await opted_in(billing, payment_settings, fake_stripe, sender, runtime, tenants)
    await fold(pool, redis_client, tenant, 5)
    manual = await buy(billing, payment_settings, tenant, credits=200)
    events = fake_stripe.complete_checkout(manual["session_id"])

    from tests.integration.payments.conftest import deliver, process

    await deliver(billing, sender, events)
    results = await asyncio.gather(
        *(AutoTopups(runtime).check(tenant) for _ in range(5)),
        process(runtime, events),
        *(AutoTopups(runtime).check(tenant) for _ in range(5)),
    )
    checks = [r for r in results if not isinstance(r, list)]

    charged = [r for r in checks if r.outcome == "charged"]
    assert len(charged) <= 1
    assert len(topup_requests(fake_stripe)) == len(charged)
    for result in charged:
        # Only a decision made before the manual purchase was credited may charge.
        assert result.available_nano == credits_to_nano(5)
    for result in checks:
        assert result.outcome in {"charged", "above threshold", "a top-up is in progress"}
    purchases = [d for k, _, d in await money_events(pool, tenant) if k == "CreditsPurchased"]
    assert sorted(p["source"] for p in purchases) == sorted(
        ["checkout", "checkout"] + ["auto_topup"] * len(charged)
    )


async def test_a_declined_card_notifies_and_turns_auto_top_up_off(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant, _ = await opted_in(
        billing, payment_settings, fake_stripe, sender, runtime, tenants, card=CARD_DECLINED
    )
    await fold(pool, redis_client, tenant, 0)

    result = await AutoTopups(runtime).check(tenant)

    assert result.outcome == "declined: turned off"
    (request,) = topup_requests(fake_stripe)
    assert request.status == 402
    log = await money_events(pool, tenant)
    assert [(kind, key) for kind, key, _ in log[1:]] == [
        ("PaymentFailed", f"payment-failed:{result.order_id}"),
        ("AutoTopupDisabled", f"autotopup-disabled:{result.order_id}"),
    ]
    assert log[1][2]["code"] == "insufficient_funds"
    settings_view = await billing.get(
        f"/billing/tenants/{tenant}/auto-topup", headers=admin_of(payment_settings, tenant)
    )
    assert settings_view.json()["enabled"] is False
    assert "insufficient funds" in settings_view.json()["disabled_reason"]
    notes = await billing.get(
        f"/billing/tenants/{tenant}/payment-notifications",
        headers=admin_of(payment_settings, tenant),
    )
    (note,) = notes.json()["data"]
    assert note["kind"] == "auto_topup_failed"
    assert "auto top-up is now off" in note["message"]
    # Stripe's payment_intent.payment_failed webhook for it changes nothing more.
    failed = [
        e for e in fake_stripe.events.values() if e["type"] == "payment_intent.payment_failed"
    ]
    await deliver_and_process(billing, sender, runtime, failed)
    assert len(await money_events(pool, tenant)) == 3
    assert (await AutoTopups(runtime).check(tenant)).outcome == "not enabled"


async def test_a_top_up_timing_out_is_retried_with_the_same_key_and_charged_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant, _ = await opted_in(billing, payment_settings, fake_stripe, sender, runtime, tenants)
    await fold(pool, redis_client, tenant, 0)
    fake_stripe.fail_next("POST", "/v1/payment_intents", kind="timeout", seconds=1.5)

    result = await AutoTopups(runtime).check(tenant)

    assert result.outcome == "charged"
    calls = topup_requests(fake_stripe)
    assert len(calls) >= 2
    assert {c.idempotency_key for c in calls} == {f"tally:topup:{result.order_id}"}
    assert (
        len(
            [
                pi
                for pi in fake_stripe.payment_intents.values()
                if pi["metadata"].get("source") == "auto_topup"
            ]
        )
        == 1
    )


async def test_a_top_up_whose_outcome_is_unknown_blocks_others_and_is_retried_with_its_key(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant, _ = await opted_in(billing, payment_settings, fake_stripe, sender, runtime, tenants)
    await fold(pool, redis_client, tenant, 0)
    fake_stripe.fail_next("POST", "/v1/payment_intents", kind="500", times=3)
    topups = AutoTopups(runtime)

    first = await topups.check(tenant)
    assert first.outcome == "stripe unavailable: will retry"
    assert (await topups.check(tenant)).outcome == "a top-up is in progress"

    (retried,) = await topups.retry_stale(older_than_seconds=0)

    assert (retried.outcome, retried.order_id) == ("charged", first.order_id)
    calls = topup_requests(fake_stripe)
    assert [c.status for c in calls] == [500, 500, 500, 200]
    assert {c.idempotency_key for c in calls} == {f"tally:topup:{first.order_id}"}
    sources = [
        d["source"] for k, _, d in await money_events(pool, tenant) if k == "CreditsPurchased"
    ]
    assert sources == ["checkout", "auto_topup"]


async def test_redis_behind_the_fold_puts_the_decision_off(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant, _ = await opted_in(billing, payment_settings, fake_stripe, sender, runtime, tenants)
    await fold(pool, redis_client, tenant, 0)
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE balances SET folded_events = folded_events + 1 WHERE tenant_id = $1", tenant
        )
    result = await AutoTopups(runtime).check(tenant)
    assert result.outcome == "balance is being folded; decide next time"
    assert topup_requests(fake_stripe) == []


async def test_turning_auto_top_up_on_needs_a_saved_card_and_writes_nothing_otherwise(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    pack = (
        await billing.post(
            "/billing/packs",
            json={"name": "Refill", "credits": 100, "price": "90.00"},
            headers=operator(payment_settings),
        )
    ).json()
    await buy(billing, payment_settings, tenant, credits=10)  # card not saved

    response = await billing.put(
        f"/billing/tenants/{tenant}/auto-topup",
        json={"enabled": True, "threshold_credits": 5, "pack_id": pack["id"]},
        headers=admin_of(payment_settings, tenant),
    )

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_saved_payment_method"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM auto_topup_settings") == 0
        assert (
            await conn.fetchval("SELECT count(*) FROM events WHERE type = 'AutoTopupConfigured'")
            == 0
        )
