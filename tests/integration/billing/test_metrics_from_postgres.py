"""Billing's /metrics reports platform state read from Postgres: fold lag per shard, auto
top-up orders, stored Stripe events and alert webhooks, each by status."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from billing.alerts.metrics import ALERT_WEBHOOKS
from billing.app import create_app
from billing.fold.service import Folder
from billing.fold_lag import FOLD_LAG
from billing.payments.metrics import PAYMENTS_STATE
from tally.config import Settings, get_settings
from tests.integration.billing.helpers import append, create_tenant, gateway_usage, set_price


@pytest.fixture(autouse=True)
def _read_on_every_scrape() -> Iterator[None]:
    # The collectors keep a read for two seconds; these tests scrape right after each change.
    collectors = (FOLD_LAG, PAYMENTS_STATE, ALERT_WEBHOOKS)
    with pytest.MonkeyPatch.context() as patch:
        for collector in collectors:
            patch.setattr(collector, "max_age", 0.0)
        yield


async def scrape(settings: Settings) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def lag(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], shard: int
) -> tuple[float, float]:
    labels = (("shard", str(shard)),)
    return samples["tally_fold_lag_events", labels], samples["tally_fold_lag_seconds", labels]


async def event_count(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        count: int = await conn.fetchval("SELECT count(*) FROM events")
    return count


async def test_fold_lag_counts_unfolded_events_and_their_age_then_drops_to_zero(
    pool: asyncpg.Pool,
) -> None:
    settings = get_settings()
    assert settings.fold_shards == 1
    tenant = await create_tenant(pool)
    await set_price(pool, "m", "1", "1")
    for _ in range(3):
        await append(pool, await gateway_usage(pool, tenant, "m"))
    started = time.monotonic()
    time.sleep(0.2)

    events, seconds = lag(await scrape(settings), 0)
    assert events == await event_count(pool)  # nothing folded yet: every event is behind
    assert 0.2 <= seconds < 0.2 + (time.monotonic() - started) + 5

    await Folder(pool, shard_count=1).drain()
    assert lag(await scrape(settings), 0) == (0, 0)

    await append(pool, await gateway_usage(pool, tenant, "m"))
    events, seconds = lag(await scrape(settings), 0)
    assert events == 1
    assert seconds > 0


async def test_each_fold_shard_reports_its_own_lag(pool: asyncpg.Pool) -> None:
    settings = msgspec.structs.replace(get_settings(), fold_shards=2)
    await set_price(pool, "m", "1", "1")
    tenants = [await create_tenant(pool) for _ in range(6)]
    for tenant in tenants:
        await append(pool, await gateway_usage(pool, tenant, "m"))

    samples = await scrape(settings)
    behind = [lag(samples, shard)[0] for shard in (0, 1)]
    # Every event is in exactly one shard (tenant-less ones, like price changes, in shard 0).
    assert sum(behind) == await event_count(pool)
    assert all(count > 0 for count in behind)

    folder = Folder(pool, shard_count=2)
    # A transaction running anywhere on the server holds the fold's reading back for a moment
    # (that is lag too, and reported as such): fold shard 1 until it has caught up.
    deadline = time.monotonic() + 30
    while lag(samples := await scrape(settings), 1) != (0, 0) and time.monotonic() < deadline:
        await folder.fold_shard(1)
        await asyncio.sleep(0.05)
    assert lag(samples, 1) == (0, 0)
    assert lag(samples, 0)[0] == behind[0]  # nobody folded shard 0

    await folder.drain()
    samples = await scrape(settings)
    assert lag(samples, 0) == lag(samples, 1) == (0, 0)


async def test_auto_top_ups_stripe_events_and_alert_webhooks_are_counted_by_status(
    pool: asyncpg.Pool,
) -> None:
    settings = get_settings()
    samples = await scrape(settings)
    # Every status is exported before anything happened, at 0.
    assert samples["tally_auto_topup_orders", (("status", "paid"),)] == 0
    assert samples["tally_stripe_webhook_events", (("status", "failed"),)] == 0
    assert samples["tally_alert_webhooks", (("status", "delivered"),)] == 0

    tenant = await create_tenant(pool)
    async with pool.acquire() as conn:
        for source, status in (
            ("auto_topup", "paid"),
            ("auto_topup", "paid"),
            ("checkout", "paid"),
            ("auto_topup", "failed"),
        ):
            await conn.execute(
                "INSERT INTO payment_orders (id, tenant_id, source, status, credits, amount_nano,"
                " price_minor, currency, actor) VALUES ($1, $2, $3, $4, 10, 10, 10, 'usd', '{}')",
                uuid.uuid4(),
                tenant,
                source,
                status,
            )
        for status in ("processed", "processed", "failed"):
            await conn.execute(
                "INSERT INTO stripe_webhook_events (event_id, type, payload, status)"
                " VALUES ($1, 'charge.refunded', '{}', $2)",
                f"evt_{uuid.uuid4().hex}",
                status,
            )
        await conn.execute(
            "INSERT INTO notifications (id, tenant_id, kind, position, url, payload, status)"
            " VALUES ($1, $2, 'low_balance', 1, 'https://example.com/hook', '{}', 'delivered')",
            uuid.uuid4(),
            tenant,
        )

    samples = await scrape(settings)
    assert samples["tally_auto_topup_orders", (("status", "paid"),)] == 2  # checkout not counted
    assert samples["tally_auto_topup_orders", (("status", "failed"),)] == 1
    assert samples["tally_stripe_webhook_events", (("status", "processed"),)] == 2
    assert samples["tally_stripe_webhook_events", (("status", "failed"),)] == 1
    assert samples["tally_alert_webhooks", (("status", "delivered"),)] == 1
    assert samples["tally_alert_webhooks", (("status", "pending"),)] == 0


async def test_metrics_are_served_without_the_database_figures_when_postgres_fails(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_args: object) -> None:
        raise asyncpg.PostgresError("down")

    monkeypatch.setattr(FOLD_LAG, "read", broken)
    samples = await scrape(get_settings())
    assert not any(name.startswith("tally_fold_lag") for name, _ in samples)
    assert samples["tally_alert_webhooks", (("status", "pending"),)] == 0


async def test_scrapes_within_two_seconds_share_one_read(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(FOLD_LAG, "max_age", 2.0)
    monkeypatch.setattr(FOLD_LAG, "_read_at", float("-inf"))
    reads = 0
    real_read = FOLD_LAG.read

    async def counted(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        return await real_read(*args)

    monkeypatch.setattr(FOLD_LAG, "read", counted)
    settings = get_settings()
    async with AsyncTestClient(create_app(settings)) as client:
        for _ in range(3):
            assert "tally_fold_lag_seconds{" in (await client.get("/metrics")).text
        assert reads == 1
        monkeypatch.setattr(FOLD_LAG, "_read_at", time.monotonic() - 2.1)
        await client.get("/metrics")
    assert reads == 2


async def test_events_a_long_transaction_holds_back_count_as_lag(pool: asyncpg.Pool) -> None:
    # Folds read only below the oldest running transaction; what that holds back is stale too.
    settings = get_settings()
    tenant = await create_tenant(pool)
    await set_price(pool, "m", "1", "1")
    await Folder(pool, shard_count=1).drain()
    async with pool.acquire() as long_running:
        transaction = long_running.transaction()
        await transaction.start()
        await long_running.fetchval("SELECT pg_current_xact_id()")  # takes a transaction id
        try:
            await append(pool, await gateway_usage(pool, tenant, "m"))
            await Folder(pool, shard_count=1).fold_all()  # folds nothing: the event is held back
            events, _ = lag(await scrape(settings), 0)
            assert events == 1
        finally:
            await transaction.rollback()
    await Folder(pool, shard_count=1).drain()
    assert lag(await scrape(settings), 0) == (0, 0)
