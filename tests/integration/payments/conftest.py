"""Payments test bench: the fake Stripe, the billing app over real HTTP, tenants and tokens.

The billing app runs under uvicorn in the test's own event loop (not litestar's TestClient,
which runs the app in another thread and would block the loop the fake Stripe serves from).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as redis
import uvicorn

from billing.app import create_app
from billing.payments.fulfilment import StripeEventProcessor
from billing.payments.runtime import PaymentsRuntime
from tally.auth import Principal, SigningKeys, issue_access_token, new_signing_key_entry
from tally.config import Settings, get_settings
from tests.fakes.stripe_api import FakeStripe, WebhookSender
from tests.fakes.webhook_receiver import receiver  # noqa: F401 (a fixture)

WEBHOOK_SECRET = "whsec_test_current_secret"
OLD_WEBHOOK_SECRET = "whsec_test_previous_secret"
JWT_KEY = new_signing_key_entry("test")
MONEY_EVENTS = (
    "CreditsPurchased",
    "CreditsRefunded",
    "CreditsFrozen",
    "CreditsUnfrozen",
    "PaymentFailed",
    "AutoTopupDisabled",
)


@pytest.fixture
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    fake = FakeStripe()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def payment_settings(
    fake_stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    env = {
        "TALLY_STRIPE_API_KEY": fake_stripe.api_key,
        "TALLY_STRIPE_API_BASE": fake_stripe.base_url,
        "TALLY_STRIPE_WEBHOOK_SECRET": f"{WEBHOOK_SECRET}, {OLD_WEBHOOK_SECRET}",
        "TALLY_STRIPE_TIMEOUT_MS": "600",
        "TALLY_STRIPE_MAX_NETWORK_RETRIES": "2",
        "TALLY_JWT_KEYS": JWT_KEY,
        "TALLY_CHECKOUT_CUSTOM_MIN_CREDITS": "5",
        "TALLY_CHECKOUT_CUSTOM_MAX_CREDITS": "5000",
        "TALLY_AUTOTOPUP_MAX_PER_DAY": "2",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
async def runtime(
    pool: asyncpg.Pool, redis_client: redis.Redis, payment_settings: Settings
) -> AsyncIterator[PaymentsRuntime]:
    runtime = PaymentsRuntime(pool=pool, settings=payment_settings, redis=redis_client)
    yield runtime
    await runtime.close()


@pytest.fixture
async def billing(payment_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The billing service on a real port, and an HTTP client for it."""
    config = uvicorn.Config(
        create_app(payment_settings),
        host="127.0.0.1",
        port=0,
        lifespan="on",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        yield client
    server.should_exit = True
    await task


@pytest.fixture
def sender() -> WebhookSender:
    return WebhookSender([WEBHOOK_SECRET])


class Tenants:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(
        self, name: str | None = None, *, mode: str = "prepaid", email: str | None = None
    ) -> uuid.UUID:
        tenant_id = uuid.uuid4()
        async with self._pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO tenants (id, name, mode, billing_email) VALUES ($1, $2, $3, $4)",
                tenant_id,
                name or f"tenant-{tenant_id.hex[:8]}",
                mode,
                email or f"billing-{tenant_id.hex[:6]}@example.com",
            )
        return tenant_id


@pytest.fixture
def tenants(pool: asyncpg.Pool) -> Tenants:
    return Tenants(pool)


def token(
    payment_settings: Settings,
    *,
    tenants: dict[uuid.UUID, str] | None = None,
    roles: frozenset[str] = frozenset(),
) -> dict[str, str]:
    principal = Principal(
        user_id=uuid.uuid4(),
        email="someone@example.com",
        platform_roles=roles,
        tenants=tenants or {},
    )
    jwt = issue_access_token(SigningKeys.parse(JWT_KEY), payment_settings, principal)
    return {"Authorization": f"Bearer {jwt}"}


def admin_of(settings: Settings, tenant_id: uuid.UUID) -> dict[str, str]:
    return token(settings, tenants={tenant_id: "admin"})


def operator(settings: Settings) -> dict[str, str]:
    return token(settings, roles=frozenset({"operator"}))


async def money_events(pool: asyncpg.Pool, tenant_id: uuid.UUID | None = None) -> list[Any]:
    """The tenant's payment events, in log order, as (type, idempotency key, data)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT type, idempotency_key, data::text AS data FROM events"
            " WHERE type = ANY($1::text[]) AND ($2::uuid IS NULL OR tenant_id = $2)"
            " ORDER BY position",
            list(MONEY_EVENTS),
            tenant_id,
        )
    return [(r["type"], r["idempotency_key"], msgspec.json.decode(r["data"])) for r in rows]


async def deliver(
    billing: httpx.AsyncClient, sender: WebhookSender, events: list[dict[str, Any]]
) -> None:
    for event in events:
        response = await sender.deliver(billing, event)
        assert response.status_code == 200, response.text


async def process(runtime: PaymentsRuntime, events: list[dict[str, Any]]) -> list[str]:
    """Run the job for each stored event (as the worker would), in the given order."""
    processor = StripeEventProcessor(runtime)
    return [await processor.process(event["id"]) for event in events]


async def deliver_and_process(
    billing: httpx.AsyncClient,
    sender: WebhookSender,
    runtime: PaymentsRuntime,
    events: list[dict[str, Any]],
) -> list[str]:
    await deliver(billing, sender, events)
    return await process(runtime, events)


async def buy(
    billing: httpx.AsyncClient,
    settings: Settings,
    tenant_id: uuid.UUID,
    **body: Any,
) -> dict[str, Any]:
    response = await billing.post(
        f"/billing/tenants/{tenant_id}/checkout-sessions",
        json=body,
        headers=admin_of(settings, tenant_id),
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
