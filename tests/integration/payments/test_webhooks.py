from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from billing.alerts.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, verify
from billing.payments import service as payments_service
from billing.payments.fulfilment import StripeEventProcessor
from billing.payments.runtime import PaymentsRuntime
from tally.config import Settings
from tests.fakes.stripe_api import FakeStripe, WebhookSender
from tests.fakes.webhook_receiver import Receiver, run_delivery_worker
from tests.integration.payments.conftest import (
    OLD_WEBHOOK_SECRET,
    WEBHOOK_SECRET,
    Tenants,
    buy,
    deliver,
    deliver_and_process,
    money_events,
    process,
    token,
)


async def stored_events(pool: asyncpg.Pool) -> list[str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT event_id FROM stripe_webhook_events ORDER BY received_at")
    return [r["event_id"] for r in rows]


async def paid_checkout(
    billing: httpx.AsyncClient,
    settings: Settings,
    fake: FakeStripe,
    tenant: Any,
    credits: int = 10,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    created = await buy(billing, settings, tenant, credits=credits)
    return created, fake.complete_checkout(created["session_id"])


def completed(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["type"] == "checkout.session.completed")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no header", "missing Stripe-Signature"),
        ("wrong secret", "No signatures found matching"),
        ("tampered body", "No signatures found matching"),
        ("stale timestamp", "Timestamp outside the tolerance zone"),
        ("garbage header", "Unable to extract timestamp"),
        ("v0 only", "No signatures found with expected scheme"),
    ],
)
async def test_unsigned_forged_or_stale_deliveries_get_400_a_log_line_and_store_nothing(
    case: str,
    expected: str,
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    tenants: Tenants,
    pool: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant = await tenants.create()
    _, events = await paid_checkout(billing, payment_settings, fake_stripe, tenant)
    event = completed(events)
    body = sender.body(event)
    headers = {"Content-Type": "application/json"}
    content = body.encode()
    match case:
        case "wrong secret":
            headers["Stripe-Signature"] = sender.sign(body, secrets=["whsec_attacker"])
        case "tampered body":
            headers["Stripe-Signature"] = sender.sign(body)
            content = body.replace('"paid"', '"paid" ').encode()
        case "stale timestamp":
            headers["Stripe-Signature"] = sender.sign(body, timestamp=int(time.time()) - 301)
        case "garbage header":
            headers["Stripe-Signature"] = "hello"
        case "v0 only":
            headers["Stripe-Signature"] = sender.sign(body).replace("v1=", "v0=")

    refused_before = _metric("refused")
    with capture_logs() as logs:
        # A fresh logger: the module's own was cached under an earlier test's configuration.
        monkeypatch.setattr(
            payments_service, "log", structlog.get_logger(payments_service.__name__)
        )
        response = await billing.post("/webhooks/stripe", content=content, headers=headers)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_webhook"
    assert expected in error["message"]
    refusals = [entry for entry in logs if entry["event"] == "stripe webhook refused"]
    assert len(refusals) == 1
    assert expected in refusals[0]["reason"]
    assert _metric("refused") == refused_before + 1
    assert await stored_events(pool) == []
    assert await money_events(pool) == []


async def test_a_captured_delivery_replayed_after_five_minutes_is_refused(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    _, events = await paid_checkout(billing, payment_settings, fake_stripe, tenant)
    body = sender.body(completed(events))
    captured = sender.sign(body, timestamp=int(time.time()) - 6 * 60)

    response = await sender.replay(billing, body, captured)

    assert response.status_code == 400
    assert "tolerance" in response.json()["error"]["message"]
    assert await stored_events(pool) == []


async def test_every_secret_of_a_rotation_is_accepted(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    _, events = await paid_checkout(billing, payment_settings, fake_stripe, tenant)
    old, both, new = events[0], events[1], events[2]

    assert (await sender.deliver(billing, old, secrets=[OLD_WEBHOOK_SECRET])).status_code == 200
    # During a rotation Stripe sends one v1 per secret.
    both_secrets = [WEBHOOK_SECRET, OLD_WEBHOOK_SECRET]
    assert (await sender.deliver(billing, both, secrets=both_secrets)).status_code == 200
    assert (await sender.deliver(billing, new, secrets=[WEBHOOK_SECRET])).status_code == 200
    assert sorted(await stored_events(pool)) == sorted(e["id"] for e in events)


async def test_a_redelivered_event_is_stored_once_and_credits_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    created, events = await paid_checkout(billing, payment_settings, fake_stripe, tenant)
    event = completed(events)

    stored, duplicates = _metric("stored"), _metric("duplicate")
    first = await sender.deliver(billing, event)
    again = await sender.deliver(billing, event)  # Stripe retries: same id, fresh signature
    assert (_metric("stored"), _metric("duplicate")) == (stored + 1, duplicates + 1)
    assert (first.json(), again.json()) == (
        {"received": True, "duplicate": False},
        {"received": True, "duplicate": True},
    )
    assert await process(runtime, [event, event]) == ["credited", "already processed"]
    await process(runtime, [event])

    purchases = await money_events(pool, tenant)
    assert [(kind, key) for kind, key, _ in purchases] == [
        ("CreditsPurchased", f"purchase:{created['order_id']}")
    ]


async def test_concurrent_duplicate_deliveries_and_jobs_credit_exactly_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    created, events = await paid_checkout(billing, payment_settings, fake_stripe, tenant)
    event = completed(events)
    async_succeeded = dict(
        event, id="evt_second_path", type="checkout.session.async_payment_succeeded"
    )
    intent_succeeded = next(e for e in events if e["type"] == "payment_intent.succeeded")

    responses = await asyncio.gather(*(sender.deliver(billing, event) for _ in range(12)))
    assert sorted(r.json()["duplicate"] for r in responses) == [False] + [True] * 11
    await deliver(billing, sender, [async_succeeded, intent_succeeded])

    # Workers racing on the same event, and on three events that all mean "paid".
    processor = StripeEventProcessor(runtime)
    jobs = [processor.process(e["id"]) for e in (event, async_succeeded, intent_succeeded) * 4]
    await asyncio.gather(*jobs)

    purchases = await money_events(pool, tenant)
    assert [(kind, key) for kind, key, _ in purchases] == [
        ("CreditsPurchased", f"purchase:{created['order_id']}")
    ]
    async with pool.acquire() as conn:
        statuses = await conn.fetch("SELECT status FROM stripe_webhook_events")
    assert {r["status"] for r in statuses} == {"processed"}


async def test_an_unpaid_completion_waits_and_the_async_success_credits(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    created = await buy(billing, payment_settings, tenant, credits=40)
    pending = fake_stripe.complete_checkout(created["session_id"], delayed=True)
    assert await deliver_and_process(billing, sender, runtime, pending) == [
        "awaiting a delayed payment"
    ]
    assert await money_events(pool, tenant) == []

    settled = fake_stripe.settle_delayed_payment(created["session_id"], succeed=True)
    await deliver_and_process(billing, sender, runtime, settled)

    ((kind, _, data),) = await money_events(pool, tenant)
    assert (kind, data["paid_minor"]) == ("CreditsPurchased", 4000)


async def test_a_failed_async_payment_credits_nothing_and_notifies_the_tenant_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create()
    created = await buy(billing, payment_settings, tenant, credits=40)
    events = fake_stripe.complete_checkout(created["session_id"], delayed=True)
    events += fake_stripe.settle_delayed_payment(created["session_id"], succeed=False)
    failed = next(e for e in events if e["type"] == "checkout.session.async_payment_failed")

    await deliver_and_process(billing, sender, runtime, events)
    await sender.deliver(billing, failed)

    log = await money_events(pool, tenant)
    assert [(kind, key) for kind, key, _ in log] == [
        ("PaymentFailed", f"payment-failed:{created['order_id']}")
    ]
    notes = await billing.get(
        f"/billing/tenants/{tenant}/payment-notifications",
        headers={"Authorization": _member(payment_settings, tenant)},
    )
    (note,) = notes.json()["data"]
    assert note["kind"] == "payment_failed"
    assert "$40.00" in note["message"]
    assert "No credits were added" in note["message"]
    order = await billing.get(
        f"/billing/tenants/{tenant}/orders/{created['order_id']}",
        headers={"Authorization": _member(payment_settings, tenant)},
    )
    assert order.json()["status"] == "failed"


async def test_a_failed_payment_is_also_sent_signed_to_the_tenants_webhook_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_url: str,
    receiver: Receiver,
) -> None:
    tenant = await tenants.create()
    admin = {"Authorization": token(payment_settings, tenants={tenant: "admin"})["Authorization"]}
    configured = await billing.put(
        f"/v1/tenants/{tenant}/alerts/low-balance",
        json={"threshold_nano": 0, "url": receiver.url},
        headers=admin,
    )
    assert configured.status_code == 200, configured.text
    secret = configured.json()["signing_secret"]
    created = await buy(billing, payment_settings, tenant, credits=40)
    events = fake_stripe.complete_checkout(created["session_id"], delayed=True)
    events += fake_stripe.settle_delayed_payment(created["session_id"], succeed=False)
    await deliver_and_process(billing, sender, runtime, events)
    await deliver_and_process(billing, sender, runtime, events)  # redelivered: told once

    await run_delivery_worker(pool, redis_url, payment_settings, sweep=True)

    ((headers, body, _),) = receiver.calls
    assert verify(headers[SIGNATURE_HEADER], body, secret, now=int(time.time())) > 0
    payload = json.loads(body)
    assert payload["type"] == "payment.failed"
    assert payload["data"]["tenant_id"] == str(tenant)
    assert payload["data"]["order_id"] == created["order_id"]
    assert "$40.00" in payload["data"]["message"]
    notes = await billing.get(f"/v1/tenants/{tenant}/notifications", headers=admin)
    assert [(n["kind"], n["status"]) for n in notes.json()["data"]] == [
        ("payment_failed", "delivered")
    ]
    # The same notification id in the payment notifications and on the webhook.
    listed = await billing.get(f"/billing/tenants/{tenant}/payment-notifications", headers=admin)
    assert headers[EVENT_ID_HEADER] == listed.json()["data"][0]["id"] == payload["id"]


async def test_events_that_are_not_tallys_are_ignored(
    billing: httpx.AsyncClient,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    pool: asyncpg.Pool,
) -> None:
    foreign = {
        "id": "evt_foreign",
        "object": "event",
        "type": "checkout.session.completed",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {"id": "cs_someone_else", "payment_status": "paid", "metadata": {}}},
    }
    unknown = dict(foreign, id="evt_unknown", type="customer.created")
    assert await deliver_and_process(billing, sender, runtime, [foreign, unknown]) == [
        "not a Tally checkout session",
        "customer.created is not used by Tally",
    ]
    assert await money_events(pool) == []


def _metric(result: str) -> float:
    value = REGISTRY.get_sample_value("tally_stripe_webhooks_total", {"result": result})
    return value or 0.0


def _member(settings: Settings, tenant: Any) -> str:
    from tests.integration.payments.conftest import token

    return token(settings, tenants={tenant: "member"})["Authorization"]
