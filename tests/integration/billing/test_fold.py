"""The fold: usage, grants and purchases become balances, ledger lines, rollups and lots."""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
import redis.asyncio as redis

from billing.fold.replay import replay_verify
from billing.fold.service import Folder
from tally.config import get_settings
from tally.events.billing import (
    BalanceAdjusted,
    CreditsExpired,
    CreditsFrozen,
    CreditsGranted,
    CreditsPurchased,
    CreditsRefunded,
    CreditsUnfrozen,
    UsageRecorded,
)
from tally.live_balance import LiveBalances, live_balance_from_postgres
from tests.integration.billing.helpers import (
    ACTOR,
    append,
    create_tenant,
    gateway_usage,
    set_price,
    wait_until_readable,
)

CREDIT = 10**9


def grant(tenant: uuid.UUID, credits: int, *, expires_at: datetime | None = None) -> CreditsGranted:
    return CreditsGranted(
        tenant_id=tenant,
        grant_id=uuid.uuid4(),
        amount_nano=credits * CREDIT,
        kind="promotional",
        reason="launch",
        actor=ACTOR,
        expires_at=expires_at,
    )


def purchase(tenant: uuid.UUID, credits: int, purchase_id: str) -> CreditsPurchased:
    return CreditsPurchased(
        tenant_id=tenant,
        purchase_id=purchase_id,
        amount_nano=credits * CREDIT,
        paid_minor=credits * 100,
        currency="usd",
        source="checkout",
    )


async def test_usage_is_priced_again_and_debits_grants_before_purchases(
    pool: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    tenant = await create_tenant(pool, "acme")
    await set_price(pool, "gpt-x", "2", "8", margin="25")
    await append(pool, purchase(tenant, 10, "cs_1"))
    await append(pool, grant(tenant, 1))
    usage = await gateway_usage(pool, tenant, "gpt-x", input_tokens=100_000, output_tokens=50_000)
    await append(pool, usage)
    live = LiveBalances(redis_client)
    await live.load(tenant, seq=0, balance_nano=0, unfolded={})
    await live.settle(tenant, usage.request_id, usage.charge_nano)

    run = await Folder(pool, shard_count=1, live=live).drain()

    # (100k x $2 + 50k x $8) / 1M = $0.60 base; +25% = $0.75 = 0.75 credits.
    assert usage.charge_nano == 750_000_000
    assert run.events == 5  # with the PriceChanged event (platform-wide, shard 0)
    async with pool.acquire() as conn:
        balance = await conn.fetchrow("SELECT * FROM balances WHERE tenant_id = $1", tenant)
        lines = await conn.fetch(
            "SELECT kind, amount_nano, balance_after_nano, paid_nano, promo_nano, description"
            " FROM ledger_entries WHERE tenant_id = $1 ORDER BY position",
            tenant,
        )
        rollup = await conn.fetchrow("SELECT * FROM usage_rollups WHERE tenant_id = $1", tenant)
        mismatches = await conn.fetchval("SELECT count(*) FROM pricing_mismatches")
    assert balance["balance_nano"] == 11 * CREDIT - 750_000_000
    assert balance["folded_events"] == 4  # TenantCreated counts as a folded event
    assert [(r["kind"], r["amount_nano"]) for r in lines] == [
        ("purchase", 10 * CREDIT),
        ("grant", CREDIT),
        ("usage", -750_000_000),
    ]
    assert (lines[2]["promo_nano"], lines[2]["paid_nano"]) == (750_000_000, 0)
    assert lines[2]["balance_after_nano"] == balance["balance_nano"]
    assert lines[2]["description"] == (
        "Chat completion with gpt-x: 100,000 input + 50,000 output tokens"
    )
    assert (rollup["provider"], rollup["requests"]) == ("openai", 1)
    assert (rollup["requests"], rollup["input_tokens"], rollup["output_tokens"]) == (
        1,
        100_000,
        50_000,
    )
    assert (rollup["base_nano"], rollup["charge_nano"], rollup["margin_nano"]) == (
        600_000_000,
        750_000_000,
        150_000_000,
    )
    assert mismatches == 0
    snap = await live.snapshot(tenant)
    assert snap is not None
    assert (snap.balance_nano, snap.unfolded_nano, snap.seq) == (balance["balance_nano"], 0, 4)


async def test_a_charge_the_fold_cannot_reproduce_is_reported_and_the_recomputed_one_is_used(
    pool: asyncpg.Pool,
) -> None:
    tenant = await create_tenant(pool)
    await set_price(pool, "m", "1", "1")
    usage = await gateway_usage(
        pool, tenant, "m", input_tokens=1_000_000, output_tokens=0, charge_delta=7
    )
    position = await append(pool, usage)

    await Folder(pool, shard_count=1).drain()

    async with pool.acquire() as conn:
        mismatch = await conn.fetchrow("SELECT * FROM pricing_mismatches")
        line = await conn.fetchrow(
            "SELECT amount_nano FROM ledger_entries WHERE tenant_id = $1", tenant
        )
    assert mismatch["position"] == position
    assert mismatch["reason"] == "charge"
    assert (mismatch["recorded_charge_nano"], mismatch["recomputed_charge_nano"]) == (
        CREDIT + 7,
        CREDIT,
    )
    assert line["amount_nano"] == -CREDIT


async def test_each_usage_is_priced_with_the_version_it_names(pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(pool)
    v1 = await set_price(pool, "m", "1", "1")
    old = await gateway_usage(pool, tenant, "m", input_tokens=1_000_000, output_tokens=0)
    await set_price(pool, "m", "3", "3")
    new = await gateway_usage(pool, tenant, "m", input_tokens=1_000_000, output_tokens=0)
    assert old.price_version == v1
    await append(pool, old)
    await append(pool, new)

    await Folder(pool, shard_count=1).drain()

    async with pool.acquire() as conn:
        charged = await conn.fetchval(
            "SELECT charged_nano FROM balances WHERE tenant_id = $1", tenant
        )
        mismatches = await conn.fetchval("SELECT count(*) FROM pricing_mismatches")
    assert charged == 4 * CREDIT
    assert mismatches == 0


async def test_expiry_refund_and_adjustment_follow_the_lots(pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(pool)
    await set_price(pool, "m", "1", "1")
    soon = datetime.now(UTC) + timedelta(days=1)
    starter = grant(tenant, 5, expires_at=soon)
    await append(pool, starter)
    await append(pool, purchase(tenant, 20, "cs_9"))
    await append(
        pool, await gateway_usage(pool, tenant, "m", input_tokens=2_000_000, output_tokens=0)
    )
    await append(
        pool,
        CreditsExpired(tenant_id=tenant, grant_id=starter.grant_id),
        f"expire:{starter.grant_id}",
    )
    await append(
        pool,
        CreditsRefunded(
            tenant_id=tenant,
            refund_id="re_1",
            purchase_id="cs_9",
            amount_nano=5 * CREDIT,
            refunded_minor=500,
            currency="usd",
        ),
    )
    await append(
        pool,
        BalanceAdjusted(
            tenant_id=tenant,
            adjustment_id=uuid.uuid4(),
            amount_nano=-CREDIT,
            reason="goodwill reversal",
            actor=ACTOR,
        ),
    )

    await Folder(pool, shard_count=1).drain()

    async with pool.acquire() as conn:
        b = await conn.fetchrow("SELECT * FROM balances WHERE tenant_id = $1", tenant)
        kinds = await conn.fetch(
            "SELECT kind, amount_nano FROM ledger_entries WHERE tenant_id = $1 ORDER BY position",
            tenant,
        )
        lots = {
            r["lot_id"]: r
            for r in await conn.fetch("SELECT * FROM credit_lots WHERE tenant_id = $1", tenant)
        }
    # 5 granted, 2 used from the grant, 3 expired; 20 bought, 5 refunded, 1 adjusted away.
    assert b["balance_nano"] == (5 - 2 - 3 + 20 - 5 - 1) * CREDIT
    assert b["expired_nano"] == 3 * CREDIT
    assert [(k["kind"], k["amount_nano"] // CREDIT) for k in kinds] == [
        ("grant", 5),
        ("purchase", 20),
        ("usage", -2),
        ("expiry", -3),
        ("refund", -5),
        ("adjustment", -1),
    ]
    assert lots[f"grant:{starter.grant_id}"]["expired_nano"] == 3 * CREDIT
    assert lots["purchase:cs_9"]["remaining_nano"] == 14 * CREDIT


async def test_two_folders_on_two_shards_never_overlap(pool: asyncpg.Pool) -> None:
    tenants = [await create_tenant(pool) for _ in range(12)]
    await set_price(pool, "m", "1", "1")
    for tenant in tenants:
        await append(pool, grant(tenant, 100))
        for _ in range(5):
            await append(
                pool, await gateway_usage(pool, tenant, "m", input_tokens=1000, output_tokens=0)
            )
    await wait_until_readable(pool)
    # Each worker folds the shards it is given; both run all shards concurrently here, the
    # worst case: the consumer lock must keep every event applied once.
    a = Folder(pool, shard_count=2, batch_size=7)
    b = Folder(pool, shard_count=2, batch_size=7)
    await asyncio.gather(a.fold_shard(0), b.fold_shard(1), a.fold_shard(1), b.fold_shard(0))
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT balance_nano, folded_events FROM balances")
        lines = await conn.fetchval("SELECT count(*) FROM ledger_entries")
    assert len(rows) == 12
    assert all(r["folded_events"] == 7 for r in rows)
    assert all(r["balance_nano"] == 100 * CREDIT - 5 * 1_000_000 for r in rows)
    assert lines == 12 * 6


async def test_folding_ahead_in_small_batches_writes_what_replay_rebuilds(
    pool: asyncpg.Pool,
) -> None:
    # Batches of 2 over interleaved tenants: each batch is folded from the states the batch
    # still being written left, lots and disputes carried across batch boundaries.
    tenants = [await create_tenant(pool) for _ in range(3)]
    await set_price(pool, "m", "1", "1")
    soon = datetime.now(UTC) + timedelta(days=1)
    grants = {t: grant(t, 3, expires_at=soon) for t in tenants}
    for t in tenants:
        await append(pool, grants[t])
        await append(pool, purchase(t, 4, f"cs_{t}"))
    for round_ in range(3):
        for t in tenants:
            await append(
                pool, await gateway_usage(pool, t, "m", input_tokens=900_000, output_tokens=0)
            )
        if round_ == 0:
            for t in tenants:
                await append(
                    pool,
                    CreditsFrozen(
                        tenant_id=t, dispute_id=f"dp_{t}", purchase_id=f"cs_{t}", amount_nano=CREDIT
                    ),
                )
        if round_ == 1:
            for t in tenants:
                await append(
                    pool, CreditsUnfrozen(tenant_id=t, dispute_id=f"dp_{t}", outcome="won")
                )
                await append(
                    pool, CreditsExpired(tenant_id=t, grant_id=grants[t].grant_id), f"x:{t}"
                )
    for t in tenants:
        await append(
            pool,
            CreditsRefunded(
                tenant_id=t,
                refund_id=f"re_{t}",
                purchase_id=f"cs_{t}",
                amount_nano=2 * CREDIT,
                refunded_minor=200,
                currency="usd",
            ),
        )
        await append(
            pool,
            BalanceAdjusted(
                tenant_id=t, adjustment_id=uuid.uuid4(), amount_nano=CREDIT, reason="r", actor=ACTOR
            ),
        )
        await append(
            pool, await gateway_usage(pool, t, "m", input_tokens=1_500_000, output_tokens=0)
        )
    await wait_until_readable(pool)

    run = await Folder(pool, shard_count=1, batch_size=2).drain()

    assert run.caught_up and run.batches > 10
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT balance_nano, folded_events FROM balances")
    # 3 granted, 1.8 of them used, 1.2 expired; 4 bought, 1 held and given back, 0.9 used,
    # 2 refunded; 1 adjusted; the last 1.5 from the adjustment, then the purchase: 0.6 left.
    assert [r["balance_nano"] for r in rows] == [6 * CREDIT // 10] * 3
    assert all(r["folded_events"] == 12 for r in rows)
    report = await replay_verify(get_settings().database_url, batch_size=1000)
    assert report.ok, report


async def _append_from_another_connection(database_url: str, events: list[UsageRecorded]) -> None:
    other = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        for event in events:
            await append(other, event)
        await wait_until_readable(other)  # a fold reading now would see them
    finally:
        await other.close()


async def test_the_live_job_leaves_events_committed_during_its_pass_to_the_next_pass(
    pool: asyncpg.Pool, database_url: str
) -> None:
    tenant = await create_tenant(pool)
    await set_price(pool, "m", "1", "1")
    await append(pool, grant(tenant, 100))
    late = [
        await gateway_usage(pool, tenant, "m", input_tokens=1000, output_tokens=0) for _ in range(2)
    ]
    await wait_until_readable(pool)
    appended = False

    def commit_meanwhile(point: str) -> None:
        # Another gateway commits while the pass runs (its own connection, in a thread: the
        # hook is called synchronously, in the middle of the fold).
        nonlocal appended
        if point == "after_commit" and not appended:
            appended = True
            thread = threading.Thread(
                target=lambda: asyncio.run(_append_from_another_connection(database_url, late))
            )
            thread.start()
            thread.join()

    folder = Folder(pool, shard_count=1, batch_size=100, fault=commit_meanwhile)
    first = await folder.fold_shard(0, chase_tail=False)
    assert appended
    assert (first.batches, first.caught_up) == (1, True)
    async with pool.acquire() as conn:
        folded = await conn.fetchval(
            "SELECT folded_events FROM balances WHERE tenant_id = $1", tenant
        )
    assert folded == 2  # TenantCreated and the grant; the late usage waits for the next pass

    await wait_until_readable(pool)
    second = await folder.fold_shard(0, chase_tail=False)
    assert (second.events, second.batches) == (2, 1)
    async with pool.acquire() as conn:
        balance = await conn.fetchrow("SELECT * FROM balances WHERE tenant_id = $1", tenant)
    assert balance["folded_events"] == 4
    assert balance["balance_nano"] == 100 * CREDIT - sum(e.charge_nano for e in late)


async def test_a_changed_shard_count_is_refused(pool: asyncpg.Pool) -> None:
    await create_tenant(pool)
    await Folder(pool, shard_count=1).drain()
    with pytest.raises(Exception, match="TALLY_FOLD_SHARDS"):
        await Folder(pool, shard_count=4).drain()


async def test_the_live_balance_rebuilt_from_postgres_includes_the_unfolded_tail(
    pool: asyncpg.Pool,
) -> None:
    tenant = await create_tenant(pool)
    await set_price(pool, "m", "1", "1")
    await append(pool, grant(tenant, 10))
    await Folder(pool, shard_count=1).drain()
    usage = await gateway_usage(pool, tenant, "m", input_tokens=1_000_000, output_tokens=0)
    await append(pool, usage)
    async with pool.acquire() as conn:
        seq, balance, unfolded = await live_balance_from_postgres(conn, tenant, fold_shards=1)
    assert (seq, balance) == (2, 10 * CREDIT)
    assert unfolded == {usage.request_id: CREDIT}
