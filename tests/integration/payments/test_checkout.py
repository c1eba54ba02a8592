from __future__ import annotations

import asyncio

import asyncpg
import httpx

from billing.payments.runtime import PaymentsRuntime
from tally.config import Settings
from tally.money import credits_to_nano
from tests.fakes.stripe_api import FakeStripe, WebhookSender
from tests.integration.payments.conftest import (
    Tenants,
    admin_of,
    buy,
    deliver_and_process,
    money_events,
    operator,
)


async def create_pack(
    billing: httpx.AsyncClient, settings: Settings, **body: object
) -> dict[str, object]:
    response = await billing.post("/billing/packs", json=body, headers=operator(settings))
    assert response.status_code == 201, response.text
    pack: dict[str, object] = response.json()
    return pack


async def test_a_tenant_admin_buys_a_pack_end_to_end_and_is_credited_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create("Acme", email="pay@acme.test")
    pack = await create_pack(billing, payment_settings, name="Starter", credits=100, price="90.00")

    created = await buy(billing, payment_settings, tenant, pack_id=pack["id"])
    assert created["url"].startswith(fake_stripe.base_url)
    assert (created["credits"], created["price_minor"], created["currency"]) == (100, 9000, "usd")

    session = fake_stripe.sessions[created["session_id"]]
    metadata = {
        "tally_order_id": created["order_id"],
        "tenant_id": str(tenant),
        "pack_id": pack["id"],
        "credits": "100",
        "source": "checkout",
    }
    assert session["metadata"] == metadata
    intent_data = fake_stripe._session_private[session["id"]]["payment_intent_data"]
    assert intent_data["metadata"] == metadata
    assert "setup_future_usage" not in intent_data
    assert session["success_url"] == payment_settings.stripe_success_url
    assert session["cancel_url"] == payment_settings.stripe_cancel_url
    (customer,) = fake_stripe.customers.values()
    assert (session["customer"], customer["email"]) == (customer["id"], "pay@acme.test")
    # Every POST to Stripe carried a key derived from our ids.
    keys = [r.idempotency_key for r in fake_stripe.requests if r.method == "POST"]
    assert keys == [f"tally:customer:{tenant}", f"tally:checkout:{created['order_id']}"]

    events = fake_stripe.complete_checkout(session["id"])
    outcomes = await deliver_and_process(billing, sender, runtime, events)
    assert "credited" in outcomes

    (purchase,) = await money_events(pool, tenant)
    kind, key, data = purchase
    assert (kind, key) == ("CreditsPurchased", f"purchase:{created['order_id']}")
    assert data["amount_nano"] == credits_to_nano(100)
    assert (data["paid_minor"], data["currency"], data["source"]) == (9000, "usd", "checkout")
    assert data["stripe_payment_intent"] == fake_stripe.sessions[session["id"]]["payment_intent"]
    assert (data["pack_id"], data["payment_method_kind"]) == (pack["id"], "card")

    orders = await billing.get(
        f"/billing/tenants/{tenant}/orders", headers=admin_of(payment_settings, tenant)
    )
    (order,) = orders.json()["data"]
    assert (order["status"], order["credits"]) == ("paid", 100)


async def test_the_stripe_customer_is_created_once_and_reused_even_under_concurrency(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    results = await asyncio.gather(
        *(buy(billing, payment_settings, tenant, credits=10) for _ in range(5))
    )
    await buy(billing, payment_settings, tenant, credits=20)

    assert len(fake_stripe.customers) == 1
    (customer_id,) = fake_stripe.customers
    assert {fake_stripe.sessions[r["session_id"]]["customer"] for r in results} == {customer_id}
    async with pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT customer_id FROM stripe_customers WHERE tenant_id = $1", tenant
        )
    assert stored == customer_id


async def test_a_custom_amount_is_priced_with_the_credit_price_of_the_price_book(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    default = await buy(billing, payment_settings, tenant, credits=25)
    assert (default["price_minor"], default["amount_nano"]) == (2500, credits_to_nano(25))
    async with pool.acquire() as conn:
        # A fixed version, not nextval(): the sequence outlives the per-test truncation.
        await conn.execute("INSERT INTO credit_prices VALUES (1, 0.0125)")
    priced = await buy(billing, payment_settings, tenant, credits=999)
    # 999 x $0.0125 = $12.4875 -> 1249 cents, rounded once, half-up.
    assert priced["price_minor"] == 1249
    line = fake_stripe._session_private[priced["session_id"]]["line_items"][0]
    assert line["price_data"]["unit_amount"] == "1249"


async def test_a_stripe_500_is_retried_with_the_same_idempotency_key(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    tenants: Tenants,
) -> None:
    tenant = await tenants.create()
    fake_stripe.fail_next("POST", "/v1/customers", kind="500")
    fake_stripe.fail_next("POST", "/v1/checkout/sessions", kind="500", times=2)

    created = await buy(billing, payment_settings, tenant, credits=10)

    customer_calls = fake_stripe.requests_to("POST", "/v1/customers")
    session_calls = fake_stripe.requests_to("POST", "/v1/checkout/sessions")
    assert [r.status for r in customer_calls] == [500, 200]
    assert [r.status for r in session_calls] == [500, 500, 200]
    assert {r.idempotency_key for r in customer_calls} == {f"tally:customer:{tenant}"}
    assert {r.idempotency_key for r in session_calls} == {f"tally:checkout:{created['order_id']}"}
    assert len(fake_stripe.sessions) == 1
    assert len(fake_stripe.customers) == 1


async def test_a_stripe_timeout_is_retried_with_the_same_key_and_gets_the_first_result(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    tenants: Tenants,
) -> None:
    tenant = await tenants.create()
    # Stripe creates the session but the answer arrives after the client gave up.
    fake_stripe.fail_next("POST", "/v1/checkout/sessions", kind="timeout", seconds=1.5)

    created = await buy(billing, payment_settings, tenant, credits=10)

    calls = fake_stripe.requests_to("POST", "/v1/checkout/sessions")
    assert len(calls) >= 2
    assert {c.idempotency_key for c in calls} == {f"tally:checkout:{created['order_id']}"}
    assert calls[-1].replayed
    # One session at Stripe, and it is the one we hand out.
    (session_id,) = fake_stripe.sessions
    assert created["session_id"] == session_id


async def test_stripe_down_answers_502_and_leaves_no_open_order(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    await buy(billing, payment_settings, tenant, credits=10)  # customer exists now
    fake_stripe.fail_next("POST", "/v1/checkout/sessions", kind="500", times=3)

    response = await billing.post(
        f"/billing/tenants/{tenant}/checkout-sessions",
        json={"credits": 10},
        headers=admin_of(payment_settings, tenant),
    )

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "payment_provider_error"
    async with pool.acquire() as conn:
        statuses = await conn.fetch(
            "SELECT status FROM payment_orders WHERE tenant_id = $1 ORDER BY created_at", tenant
        )
    assert [r["status"] for r in statuses] == ["open", "error"]
    orders = await billing.get(
        f"/billing/tenants/{tenant}/orders", headers=admin_of(payment_settings, tenant)
    )
    assert len(orders.json()["data"]) == 1
