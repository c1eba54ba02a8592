"""Finance test helpers: tenants, and money events recorded at chosen moments of the past."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest

from billing.finance.config import FinanceConfig, build_finance_config
from tally.config import get_settings
from tally.eventlog import Event, NewEvent, append_events
from tally.events.billing import (
    CreditsGranted,
    CreditsPurchased,
    CreditsRefunded,
    UsageRecorded,
)
from tally.events.tenant import Actor
from tally.pricing import TokenUsage

C = 10**9
_keys = itertools.count()


@pytest.fixture
def config() -> FinanceConfig:
    settings = msgspec.structs.replace(
        get_settings(),
        tax_rates="DE:19,FR:20,PL:23",
        issuer_name="Tally Platform GmbH",
        issuer_address="Hauptstraße 1|10115 Berlin",
        issuer_country="DE",
        issuer_tax_id="DE123456789",
        issuer_email="billing@tally.example",
    )
    return build_finance_config(settings)


async def add_tenant(
    pool: asyncpg.Pool,
    name: str,
    *,
    country: str | None = "DE",
    tax_id: str | None = None,
    address: Any = None,
    created_at: datetime = datetime(2024, 1, 1, tzinfo=UTC),
    mode: str = "prepaid",
) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO tenants (id, name, mode, billing_email, tax_id, address, country, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        tenant_id,
        name,
        mode,
        f"billing@{name.lower().replace(' ', '-')}.example",
        tax_id,
        address
        if address is not None
        else {"line1": "Street 1", "city": "Town", "postal_code": "1"},
        country,
        created_at,
    )
    return tenant_id


async def record(pool: asyncpg.Pool, event: Event, at: datetime) -> int:
    """Append `event` as if the log had recorded it at `at`; returns its position."""
    async with pool.acquire() as conn, conn.transaction():
        [stored] = await append_events(conn, [NewEvent(event, f"test-{next(_keys)}")])
        await conn.execute(
            "UPDATE events SET recorded_at = $2 WHERE position = $1", stored.position, at
        )
    return stored.position


def purchased(
    tenant_id: uuid.UUID, purchase_id: str, credits: int, paid_minor: int, currency: str = "eur"
) -> CreditsPurchased:
    return CreditsPurchased(
        tenant_id=tenant_id,
        purchase_id=purchase_id,
        amount_nano=credits * C,
        paid_minor=paid_minor,
        currency=currency,
        source="checkout",
        stripe_payment_intent=f"pi_{purchase_id}",
    )


def refunded(
    tenant_id: uuid.UUID, refund_id: str, purchase_id: str, credits: int, refunded_minor: int
) -> CreditsRefunded:
    return CreditsRefunded(
        tenant_id=tenant_id,
        refund_id=refund_id,
        purchase_id=purchase_id,
        amount_nano=credits * C,
        refunded_minor=refunded_minor,
        currency="eur",
    )


def granted(tenant_id: uuid.UUID, credits: int, **kwargs: Any) -> CreditsGranted:
    return CreditsGranted(
        tenant_id=tenant_id,
        grant_id=uuid.uuid4(),
        amount_nano=credits * C,
        kind="promotional",
        reason="welcome",
        actor=Actor(kind="cli"),
        **kwargs,
    )


def used(
    tenant_id: uuid.UUID,
    model: str,
    charge_nano: int,
    base_nano: int,
    *,
    at: datetime,
    provider: str = "openai",
    input_tokens: int = 100,
    cached: int = 10,
    output: int = 50,
) -> UsageRecorded:
    return UsageRecorded(
        request_id=uuid.uuid4().hex,
        tenant_id=tenant_id,
        key_id=uuid.UUID(int=1),
        model=model,
        endpoint="/v1/chat/completions",
        usage=TokenUsage(
            input_tokens=input_tokens, cached_input_tokens=cached, output_tokens=output
        ),
        price_version=1,
        charge_nano=charge_nano,
        base_nano=base_nano,
        status="ok",
        latency_ms=100,
        occurred_at=at,
        provider=provider,
    )


def at(day: str) -> datetime:
    """ "2025-03-10" or "2025-03-10T12:00" as a UTC instant."""
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


Recorder = Callable[[Event, datetime], Any]


async def issue_all(pool: asyncpg.Pool, config: FinanceConfig, expected: int) -> int:
    """Issue documents until `expected` were issued: the gap-safe reader waits for every
    transaction of the Postgres server (other test databases' too) older than our events."""
    import asyncio

    from billing.finance.service import finance_service

    issued = 0
    for _ in range(300):
        issued += await finance_service.issue_pending_documents(pool, config)
        if issued >= expected:
            return issued
        await asyncio.sleep(0.05)
    return issued


async def fold(pool: asyncpg.Pool) -> None:
    """Run billing's real fold over everything appended so far: finance reads its projections."""
    from billing.fold.service import Folder

    await Folder(pool, shard_count=1).drain()
