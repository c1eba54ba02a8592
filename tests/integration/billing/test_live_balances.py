"""Redis live balances kept honest: reconcile reports and repairs drift, rebuilds what Redis
lost, drops charges that were folded without Redis hearing; the reaper drops lost holds."""

from __future__ import annotations

import time
import uuid

import asyncpg
import redis.asyncio as redis

from billing.balances.reconcile import Reconciler, reap_expired_holds
from billing.fold.service import Folder
from tally.config import get_settings
from tally.events.billing import CreditsGranted
from tally.live_balance import LiveBalances
from tests.integration.billing.helpers import ACTOR, append, create_tenant, gateway_usage, set_price

CREDIT = 10**9


async def _tenant_with_credits(pool: asyncpg.Pool, credits: int) -> uuid.UUID:
    tenant = await create_tenant(pool)
    await append(
        pool,
        CreditsGranted(
            tenant_id=tenant,
            grant_id=uuid.uuid4(),
            amount_nano=credits * CREDIT,
            kind="manual",
            reason="",
            actor=ACTOR,
        ),
    )
    return tenant


async def test_a_lost_live_balance_is_rebuilt_exactly_with_the_unfolded_tail(
    pool: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    await set_price(pool, "m", "1", "1")
    tenant = await _tenant_with_credits(pool, 10)
    await Folder(pool, shard_count=1).drain()
    usage = await gateway_usage(pool, tenant, "m", input_tokens=1_000_000, output_tokens=0)
    await append(pool, usage)  # not folded yet

    report = await Reconciler(pool, redis_client, get_settings()).run(settle_seconds=0)

    assert report.rebuilt_missing == 1
    snap = await LiveBalances(redis_client).snapshot(tenant)
    assert snap is not None
    assert (snap.balance_nano, snap.unfolded_nano, snap.available_nano) == (
        10 * CREDIT,
        CREDIT,
        9 * CREDIT,
    )
    async with pool.acquire() as conn:
        kinds = [r["kind"] for r in await conn.fetch("SELECT kind FROM live_balance_drift")]
    assert kinds == ["missing"]


async def test_drift_is_reported_and_repaired(
    pool: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    tenant = await _tenant_with_credits(pool, 10)
    live = LiveBalances(redis_client)
    await Folder(pool, shard_count=1, live=live).drain()
    await live.load(tenant, seq=2, balance_nano=10 * CREDIT, unfolded={})
    # Someone (a bug, a manual edit) moved the Redis balance.
    await redis_client.hset(f"tally:{{{tenant}}}:bal", "balance", str(99 * CREDIT))  # type: ignore[misc]
    await live.hold(tenant, "in-flight", CREDIT, expires_at=2**40)

    report = await Reconciler(pool, redis_client, get_settings()).run(settle_seconds=0)

    assert (report.drifted, report.repaired) == (1, 1)
    snap = await live.snapshot(tenant)
    assert snap is not None
    assert (snap.balance_nano, snap.holds_nano) == (10 * CREDIT, CREDIT)  # holds survive
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM live_balance_drift")
    assert (row["kind"], row["redis_balance_nano"], row["pg_balance_nano"], row["repaired"]) == (
        "balance",
        99 * CREDIT,
        10 * CREDIT,
        True,
    )


async def test_charges_folded_without_redis_hearing_are_dropped_after_the_grace(
    pool: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    await set_price(pool, "m", "1", "1")
    tenant = await _tenant_with_credits(pool, 10)
    live = LiveBalances(redis_client)
    await Folder(pool, shard_count=1, live=live).drain()
    await live.load(tenant, seq=2, balance_nano=10 * CREDIT, unfolded={})
    usage = await gateway_usage(pool, tenant, "m", input_tokens=1_000_000, output_tokens=0)
    await live.settle(tenant, usage.request_id, usage.charge_nano)
    await live.settle(tenant, "still-appending", 7)  # settled, usage event not appended yet
    await append(pool, usage)
    await Folder(pool, shard_count=1).drain()  # a fold whose worker died before telling Redis

    settings = get_settings()
    reconciler = Reconciler(pool, redis_client, settings)
    now = time.time()
    first = await reconciler.run(now=now, settle_seconds=0)
    snap = await live.snapshot(tenant)
    assert snap is not None and first.repaired == 1  # seq behind: balance repaired at once
    assert snap.balance_nano == 9 * CREDIT
    assert await live.unfolded_charges(tenant) == {usage.request_id: CREDIT, "still-appending": 7}

    await reconciler.run(now=now + settings.live_balance_stale_seconds + 1, settle_seconds=0)
    assert await live.unfolded_charges(tenant) == {}
    snap = await live.snapshot(tenant)
    assert snap is not None and snap.available_nano == 9 * CREDIT


async def test_expired_holds_of_every_tenant_are_reaped(redis_client: redis.Redis) -> None:
    live = LiveBalances(redis_client)
    tenants = [uuid.uuid4() for _ in range(3)]
    for tenant in tenants:
        await live.load(tenant, seq=1, balance_nano=100, unfolded={})
        await live.hold(tenant, "lost", 40, expires_at=1_000)
        await live.hold(tenant, "alive", 10, expires_at=2**40)
    assert await reap_expired_holds(redis_client, now=2_000) == 3
    for tenant in tenants:
        snap = await live.snapshot(tenant)
        assert snap is not None and snap.holds_nano == 10
