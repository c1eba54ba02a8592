from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as redis
from arq.connections import RedisSettings
from arq.worker import Worker

from billing import tasks as billing_tasks
from billing.payments import tasks as payments_tasks
from tally import cli
from tally.config import Settings
from tally.money import credits_to_nano
from tally.worker import _shutdown, _startup
from tests.fakes.stripe_api import FakeStripe, WebhookSender
from tests.fixtures.arq_worker import running
from tests.fixtures.waiting import eventually
from tests.integration.payments.conftest import (
    Tenants,
    admin_of,
    buy,
    deliver,
    money_events,
)


async def test_a_purchase_reaches_the_balance_through_a_real_worker_exactly_once(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    """Checkout, signed webhook, ARQ job, CreditsPurchased, the fold, and the balance API."""
    tenant = await tenants.create()
    created = await buy(billing, payment_settings, tenant, credits=15)
    events = fake_stripe.complete_checkout(created["session_id"])
    await deliver(billing, sender, events)
    await deliver(billing, sender, events)  # Stripe redelivers: stored once, credited once

    worker = Worker(
        functions=billing_tasks.FUNCTIONS,
        redis_settings=RedisSettings.from_dsn(payment_settings.redis_url),
        on_startup=_startup,  # the worker's own start-up: pool, fold waker
        on_shutdown=_shutdown,
        handle_signals=False,
        poll_delay=0.05,
    )
    async with running(worker):
        balance = await _balance_once_folded(billing, payment_settings, tenant, credits=15)
        # Refund a third: the refund travels the same way and takes back its share.
        charge = fake_stripe.charge_of(created["session_id"])["id"]
        await deliver(billing, sender, fake_stripe.refund(charge, 500))
        balance = await _balance_once_folded(billing, payment_settings, tenant, credits=10)

    assert worker.jobs_failed == 0
    assert balance["available_nano"] == balance["balance_nano"]
    async with pool.acquire() as conn:
        statuses = await conn.fetch(
            "SELECT event_id, status FROM stripe_webhook_events WHERE event_id = ANY($1::text[])",
            [event["id"] for event in events],
        )
    assert len(statuses) == len(events)
    assert {row["status"] for row in statuses} <= {"processed", "ignored"}
    kinds = [(kind, key) for kind, key, _ in await money_events(pool, tenant)]
    assert kinds[0] == ("CreditsPurchased", f"purchase:{created['order_id']}")
    assert [kind for kind, _ in kinds] == ["CreditsPurchased", "CreditsRefunded"]
    ledger = await billing.get(
        f"/v1/tenants/{tenant}/ledger", headers=admin_of(payment_settings, tenant)
    )
    assert ledger.status_code == 200, ledger.text
    amounts = sorted(line["amount_nano"] for line in ledger.json()["data"])
    assert amounts == [-credits_to_nano(5), credits_to_nano(15)]


async def _balance_once_folded(
    billing: httpx.AsyncClient, settings: Settings, tenant: uuid.UUID, *, credits: int
) -> dict[str, Any]:
    """The tenant's balance from the billing API once the fold has applied `credits`."""
    body: dict[str, Any] = {}

    async def folded() -> bool:
        response = await billing.get(
            f"/v1/tenants/{tenant}/balance", headers=admin_of(settings, tenant)
        )
        assert response.status_code == 200, response.text
        body.update(response.json())
        caught_up = (
            body["folded_balance_nano"] == body["balance_nano"] and not body["pending_events"]
        )
        return caught_up and body["balance_nano"] == credits_to_nano(credits)

    await eventually(folded, f"a folded balance of {credits} credits")
    return body


async def test_the_sweeper_processes_stored_events_whose_job_was_lost(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant = await tenants.create()
    created = await buy(billing, payment_settings, tenant, credits=15)
    events = fake_stripe.complete_checkout(created["session_id"])
    await deliver(billing, sender, events)
    await redis_client.flushdb()  # the queued jobs are gone

    ctx = {"pool": pool, "settings": payment_settings, "redis": redis_client}
    done = await payments_tasks.sweep_stripe_events(ctx, older_than_seconds=0)

    assert done == len(events)
    assert [kind for kind, _, _ in await money_events(pool, tenant)] == ["CreditsPurchased"]
    assert await payments_tasks.sweep_stripe_events(ctx, older_than_seconds=0) == 0


async def test_a_failing_event_is_recorded_and_succeeds_on_a_later_sweep(
    billing: httpx.AsyncClient,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    sender: WebhookSender,
    tenants: Tenants,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
) -> None:
    tenant = await tenants.create()
    created = await buy(billing, payment_settings, tenant, credits=15)
    events = fake_stripe.complete_checkout(created["session_id"])
    completed = [e for e in events if e["type"] == "checkout.session.completed"]
    await deliver(billing, sender, completed)
    fake_stripe.fail_next("GET", "/v1/payment_intents/", kind="500", times=3)
    ctx = {"pool": pool, "settings": payment_settings, "redis": redis_client}

    with pytest.raises(Exception, match="Stripe could not fetch a payment intent"):
        await payments_tasks.process_stripe_event(ctx, completed[0]["id"])
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, attempts, last_error FROM stripe_webhook_events")
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert await money_events(pool, tenant) == []

    assert await payments_tasks.sweep_stripe_events(ctx, older_than_seconds=0) == 1
    assert [kind for kind, _, _ in await money_events(pool, tenant)] == ["CreditsPurchased"]


def run_cli(argv: list[str]) -> tuple[int, Any]:
    """`tally ...` in this process (in a thread, so the fake Stripe keeps serving)."""
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    lines = out.getvalue().strip().splitlines()
    return code, json.loads(lines[-1]) if lines else None


async def test_operators_make_packs_and_payment_links_from_the_cli(
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    tenant = await tenants.create("Globex")
    code, pack = await asyncio.to_thread(
        run_cli,
        ["pack", "create", "--name", "Big", "--credits", "1000", "--price", "850", "--json"],
    )
    assert code == 0
    assert (pack["credits"], pack["price_minor"], pack["price_display"]) == (1000, 85000, "$850.00")
    code, listed = await asyncio.to_thread(run_cli, ["pack", "list", "--json"])
    assert [p["id"] for p in listed["data"]] == [pack["id"]]

    code, link = await asyncio.to_thread(
        run_cli, ["checkout", "create", "--tenant", "globex", "--credits", "42", "--json"]
    )
    assert code == 0
    assert {"session_id", "url", "order_id"} <= set(link)
    assert link["url"] == fake_stripe.sessions[link["session_id"]]["url"]
    assert (link["tenant_id"], link["credits"], link["price_minor"]) == (str(tenant), 42, 4200)

    code, by_pack = await asyncio.to_thread(
        run_cli, ["checkout", "create", "--tenant", str(tenant), "--pack", pack["id"], "--json"]
    )
    assert (code, by_pack["price_minor"]) == (0, 85000)
    async with pool.acquire() as conn:
        actors = await conn.fetch("SELECT actor FROM payment_orders ORDER BY created_at")
    assert [a["actor"] for a in actors] == [{"kind": "cli"}, {"kind": "cli"}]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["checkout", "create", "--tenant", "nobody", "--credits", "10"], "no tenant 'nobody'"),
        (["checkout", "create", "--tenant", "Initech", "--credits", "0"], "Expected `int` >= 1"),
        (["checkout", "create", "--tenant", "Initech", "--credits", "4"], "between 5 and 5000"),
        (["checkout", "create", "--tenant", "Initech", "--pack", "x"], "--pack must be an id"),
        (["pack", "create", "--name", "A", "--credits", "1", "--price", "1.001"], "decimals"),
        (["pack", "archive", "9d8c1a0e-3f7d-4b61-9d6e-0c2a3b4d5e6f"], "no such active pack"),
    ],
)
async def test_cli_mistakes_are_explained_and_write_nothing(
    argv: list[str],
    message: str,
    payment_settings: Settings,
    fake_stripe: FakeStripe,
    tenants: Tenants,
    pool: asyncpg.Pool,
) -> None:
    await tenants.create("Initech")
    code, error = await asyncio.to_thread(run_cli, [*argv, "--json"])
    assert code == 1
    assert message in error["error"]["message"]
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM payment_orders") == 0
        assert await conn.fetchval("SELECT count(*) FROM credit_packs") == 0
    assert fake_stripe.requests == []
