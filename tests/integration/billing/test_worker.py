"""The fold and the grant expiry as they run in production: ARQ jobs woken by commits, a
worker killed -9 in the middle of a batch, expiry appended by its job."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import redis.asyncio as redis
from arq.connections import RedisSettings
from arq.worker import Worker

from billing import tasks as billing_tasks
from billing.fold.replay import replay_verify
from billing.fold.service import Folder
from billing.grants.service import grant_service
from tally.config import get_settings
from tally.events.billing import CreditsGranted
from tally.live_balance import LiveBalances
from tests.fixtures.arq_worker import running
from tests.fixtures.waiting import eventually
from tests.integration.billing.helpers import (
    ACTOR,
    append,
    create_tenant,
    gateway_usage,
    set_price,
    wait_until_readable,
)

ROOT = Path(__file__).resolve().parents[3]
CREDIT = 10**9


async def test_the_worker_folds_new_events_as_they_commit(
    pool: asyncpg.Pool, redis_client: redis.Redis, redis_url: str
) -> None:
    settings = msgspec.structs.replace(get_settings(), fold_shards=2)
    await set_price(pool, "m", "1", "1")
    tenants = [await create_tenant(pool) for _ in range(4)]

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["settings"] = settings
        ctx["pool"] = pool
        for hook in billing_tasks.STARTUP:
            await hook(ctx)

    async def shutdown(ctx: dict[str, Any]) -> None:
        for hook in billing_tasks.SHUTDOWN:
            await hook(ctx)

    worker = Worker(
        functions=billing_tasks.FUNCTIONS,
        redis_settings=RedisSettings.from_dsn(redis_url),
        on_startup=startup,
        on_shutdown=shutdown,
        poll_delay=0.05,
        handle_signals=False,
    )
    async with running(worker):
        live = LiveBalances(redis_client)
        for tenant in tenants:
            await live.load(tenant, seq=0, balance_nano=0, unfolded={})
            await append(
                pool,
                CreditsGranted(
                    tenant_id=tenant,
                    grant_id=uuid.uuid4(),
                    amount_nano=5 * CREDIT,
                    kind="manual",
                    reason="",
                    actor=ACTOR,
                ),
            )
            await append(
                pool,
                await gateway_usage(pool, tenant, "m", input_tokens=1_000_000, output_tokens=0),
            )

        async def folded() -> bool:
            async with pool.acquire() as conn:
                rows = await conn.fetch("SELECT balance_nano, folded_events FROM balances")
            return len(rows) == 4 and all(r["folded_events"] == 3 for r in rows)

        await eventually(folded, "every tenant folded")
        for tenant in tenants:

            async def told(tenant: uuid.UUID = tenant) -> bool:
                snap = await live.snapshot(tenant)
                return snap is not None and snap.balance_nano == 4 * CREDIT

            await eventually(told, "the live balance told")


async def test_a_worker_killed_mid_batch_leaves_nothing_half_applied(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await set_price(pool, "m", "1", "1")
    tenants = [await create_tenant(pool) for _ in range(5)]
    expected: dict[uuid.UUID, int] = {}
    for tenant in tenants:
        await append(
            pool,
            CreditsGranted(
                tenant_id=tenant,
                grant_id=uuid.uuid4(),
                amount_nano=100 * CREDIT,
                kind="manual",
                reason="",
                actor=ACTOR,
            ),
        )
        expected[tenant] = 100 * CREDIT
    for i in range(300):
        tenant = tenants[i % 5]
        usage = await gateway_usage(pool, tenant, "m", input_tokens=1000 + i, output_tokens=0)
        expected[tenant] -= usage.charge_nano
        await append(pool, usage)

    # Full batches of 50 only once no transaction anywhere holds the read horizon back.
    await wait_until_readable(pool)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.billing.fold_process", "4"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 120)
        assert line.strip() == "written"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    async with pool.acquire() as conn:
        # Three batches of 50 committed; the fourth (written, not committed) left no trace.
        partial = await conn.fetchval("SELECT sum(folded_events) FROM balances")
        lines = await conn.fetchval("SELECT count(*) FROM ledger_entries")
    # 150 events: the price change (platform-wide), 5 TenantCreated (no ledger line), 144 more.
    assert partial == 149
    assert lines == 144

    await Folder(pool, shard_count=1).drain()
    async with pool.acquire() as conn:
        balances = {
            r["tenant_id"]: r["balance_nano"] for r in await conn.fetch("SELECT * FROM balances")
        }
        lines = await conn.fetchval("SELECT count(*) FROM ledger_entries")
    assert balances == expected
    assert lines == 5 + 300
    report = await replay_verify(database_url)
    assert report.ok


async def test_grants_expire_once_at_their_time_removing_only_the_unused_part(
    pool: asyncpg.Pool,
) -> None:
    await set_price(pool, "m", "1", "1")
    tenant = await create_tenant(pool)
    expires = datetime.now(UTC) + timedelta(hours=1)
    await append(
        pool,
        CreditsGranted(
            tenant_id=tenant,
            grant_id=uuid.uuid4(),
            amount_nano=5 * CREDIT,
            kind="promotional",
            reason="trial",
            actor=ACTOR,
            expires_at=expires,
        ),
    )
    await append(
        pool, await gateway_usage(pool, tenant, "m", input_tokens=2_000_000, output_tokens=0)
    )
    await Folder(pool, shard_count=1).drain()

    assert await grant_service.expire_due(pool, now=expires - timedelta(seconds=1)) == 0
    assert await grant_service.expire_due(pool, now=expires) == 1
    assert await grant_service.expire_due(pool, now=expires + timedelta(minutes=1)) == 0  # once
    await Folder(pool, shard_count=1).drain()
    assert await grant_service.expire_due(pool, now=expires + timedelta(days=1)) == 0

    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT balance_nano, expired_nano FROM balances WHERE tenant_id = $1", tenant
        )
        line = await conn.fetchrow(
            "SELECT description, amount_nano FROM ledger_entries"
            " WHERE tenant_id = $1 AND kind = 'expiry'",
            tenant,
        )
    assert (row["balance_nano"], row["expired_nano"]) == (0, 3 * CREDIT)
    assert line["amount_nano"] == -3 * CREDIT
    assert line["description"].startswith("Expired: 3 unused promotional credits granted on")
