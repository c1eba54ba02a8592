from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as redis

from tally.live_balance import LiveBalances

FAR_FUTURE = 2**40


async def test_a_tenant_without_a_live_balance_reports_missing(redis_client: redis.Redis) -> None:
    live = LiveBalances(redis_client)
    result = await live.hold(uuid.uuid4(), "r1", 10, expires_at=FAR_FUTURE)
    assert result.status == "missing"


async def test_holds_settle_and_fold_keep_available_exact(redis_client: redis.Redis) -> None:
    live, tenant = LiveBalances(redis_client), uuid.uuid4()
    assert await live.load(tenant, seq=1, balance_nano=1_000, unfolded={})
    assert (await live.hold(tenant, "r1", 300, expires_at=FAR_FUTURE)).available_nano == 700
    # The same request id holding again changes nothing.
    assert (await live.hold(tenant, "r1", 300, expires_at=FAR_FUTURE)).available_nano == 700
    refused = await live.hold(tenant, "r2", 701, expires_at=FAR_FUTURE)
    assert (refused.status, refused.available_nano) == ("insufficient", 700)

    await live.settle(tenant, "r1", 120)
    await live.settle(tenant, "r1", 120)  # redelivered settle: no second charge
    snap = await live.snapshot(tenant)
    assert snap is not None
    assert (snap.balance_nano, snap.holds_nano, snap.unfolded_nano) == (1_000, 0, 120)
    assert snap.available_nano == 880

    # The fold absorbed r1: balance drops by its charge, the unfolded charge goes away.
    assert await live.apply_fold(tenant, seq=2, balance_nano=880, folded_request_ids=["r1"])
    assert not await live.apply_fold(tenant, seq=2, balance_nano=999, folded_request_ids=[])
    snap = await live.snapshot(tenant)
    assert snap is not None
    assert (snap.balance_nano, snap.unfolded_nano, snap.available_nano) == (880, 0, 880)


async def test_concurrent_holds_never_overspend(redis_client: redis.Redis) -> None:
    live, tenant = LiveBalances(redis_client), uuid.uuid4()
    await live.load(tenant, seq=1, balance_nano=100 * 7, unfolded={})
    results = await asyncio.gather(
        *(live.hold(tenant, f"r{i}", 7, expires_at=FAR_FUTURE) for i in range(500))
    )
    assert sum(r.status == "ok" for r in results) == 100
    snap = await live.snapshot(tenant)
    assert snap is not None
    assert snap.available_nano == 0


async def test_a_load_counts_unfolded_charges_and_never_overwrites(
    redis_client: redis.Redis,
) -> None:
    live, tenant = LiveBalances(redis_client), uuid.uuid4()
    assert await live.load(tenant, seq=3, balance_nano=500, unfolded={"a": 50, "b": 25})
    assert not await live.load(tenant, seq=9, balance_nano=1, unfolded={})
    snap = await live.snapshot(tenant)
    assert snap is not None
    assert (snap.balance_nano, snap.unfolded_nano, snap.available_nano) == (500, 75, 425)


async def test_expired_holds_are_reaped(redis_client: redis.Redis) -> None:
    live, tenant = LiveBalances(redis_client), uuid.uuid4()
    await live.load(tenant, seq=1, balance_nano=100, unfolded={})
    await live.hold(tenant, "lost", 60, expires_at=1000)
    await live.hold(tenant, "alive", 10, expires_at=FAR_FUTURE)
    assert await live.reap_expired_holds(tenant, now=2000) == 1
    snap = await live.snapshot(tenant)
    assert snap is not None
    assert snap.holds_nano == 10
