"""Building blocks of the billing tests: tenants, prices and events as the other services
write them (the tenant service, the gateway, the Stripe webhook)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg

from billing.prices.schemas import PriceIn
from billing.prices.service import price_service
from tally.eventlog import Event, NewEvent, append_events
from tally.events.billing import UsageRecorded
from tally.events.tenant import Actor, TenantCreated
from tally.pricebook import current_price_version, effective_price
from tally.pricing import TokenUsage, price_usage

ACTOR = Actor(kind="system", id="tests")


async def create_tenant(
    pool: asyncpg.Pool, name: str | None = None, *, mode: str = "prepaid"
) -> uuid.UUID:
    """What the tenant service does: the row and TenantCreated in one transaction."""
    tenant_id = uuid.uuid4()
    name = name or f"tenant-{tenant_id.hex[:8]}"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO tenants (id, name, mode) VALUES ($1, $2, $3)", tenant_id, name, mode
        )
        await append_events(
            conn,
            [
                NewEvent(
                    TenantCreated(tenant_id=tenant_id, name=name, mode=mode, actor=ACTOR),  # type: ignore[arg-type]
                    f"tenant:{tenant_id}",
                )
            ],
        )
    return tenant_id


async def set_price(
    pool: asyncpg.Pool,
    model: str,
    input_usd: str,
    output_usd: str,
    *,
    margin: str | None = None,
    force: bool = False,
    **extra: Any,
) -> int:
    async with pool.acquire() as conn:
        change = await price_service.set_price(
            conn,
            None,
            PriceIn(
                model=model,
                input_per_mtok=Decimal(input_usd),
                output_per_mtok=Decimal(output_usd),
                margin_pct=Decimal(margin) if margin is not None else None,
                force=force,
                **extra,
            ),
            ACTOR,
        )
    return change.price_version


async def append(pool: asyncpg.Pool, event: Event, key: str | None = None) -> int:
    async with pool.acquire() as conn, conn.transaction():
        [stored] = await append_events(conn, [NewEvent(event, key or f"test:{uuid.uuid4()}")])
    return stored.position


async def gateway_usage(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    model: str,
    *,
    input_tokens: int = 1000,
    output_tokens: int = 500,
    key_id: uuid.UUID | None = None,
    request_id: str | None = None,
    occurred_at: datetime | None = None,
    charge_delta: int = 0,
    version: int | None = None,
    provider: str = "openai",
) -> UsageRecorded:
    """A usage event priced the way the gateway prices it (current version, same code)."""
    occurred = occurred_at or datetime.now(UTC)
    usage = TokenUsage(input_tokens=input_tokens, output_tokens=output_tokens)
    async with pool.acquire() as conn:
        version = version if version is not None else await current_price_version(conn)
        price = await effective_price(
            conn, tenant_id=tenant_id, model=model, version=version, at=occurred
        )
    assert price is not None, f"{model} has no price"
    charge = price_usage(
        usage, price.price, margin_pct=price.margin_pct, credit_price_usd=price.credit_price_usd
    )
    return UsageRecorded(
        request_id=request_id or f"req-{uuid.uuid4().hex}",
        tenant_id=tenant_id,
        key_id=key_id or uuid.UUID(int=1),
        model=model,
        endpoint="/v1/chat/completions",
        usage=usage,
        price_version=version,
        charge_nano=charge.charge_nano + charge_delta,
        base_nano=charge.base_nano,
        status="ok",
        latency_ms=100,
        occurred_at=occurred,
        provider=provider,
    )


async def wait_until_readable(pool: asyncpg.Pool, *, timeout: float = 60.0) -> None:
    """Wait until the gap-safe reader may read every event committed so far.

    It reads below the oldest transaction running anywhere in the cluster, so a long
    transaction of another database on a shared server holds back a fold that folds once.
    """
    deadline = time.monotonic() + timeout
    async with pool.acquire() as conn:
        newest = await conn.fetchval("SELECT max(txid)::text::bigint FROM events")
        while newest is not None and time.monotonic() < deadline:
            horizon = await conn.fetchval(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
            )
            if horizon > newest:
                return
            await asyncio.sleep(0.05)
