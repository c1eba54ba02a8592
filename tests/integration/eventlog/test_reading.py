from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from tally.eventlog import (
    Checkpoint,
    EventNotifier,
    NewEvent,
    Shard,
    StoredEvent,
    append_events,
    consume_batch,
    read_ahead,
    read_events,
)
from tally.eventlog.reader import Handler, checkpoint_of
from tests.integration.eventlog.events import CATCH_UP_SECONDS, WidgetCounted, read_until

ROOT = Path(__file__).resolve().parents[3]


async def drain(pool: asyncpg.Pool, handler: Handler, *, limit: int, expected: int) -> None:
    """Consume until the projection holds `expected` rows (or the catch-up deadline passes)."""
    deadline = asyncio.get_running_loop().time() + CATCH_UP_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        if not await consume_batch(pool, "widgets", handler, limit=limit):
            if await pool.fetchval("SELECT count(*) FROM widget_projection") >= expected:
                return
            await asyncio.sleep(0.01)


async def append_one(conn: asyncpg.Connection, key: str, writer: int = 0) -> StoredEvent:
    [stored] = await append_events(conn, [NewEvent(WidgetCounted(writer=writer, n=0), key)])
    return stored


async def test_an_event_committed_late_is_read_in_its_turn_not_skipped(pool: asyncpg.Pool) -> None:
    slow = await pool.acquire()
    fast = await pool.acquire()
    reader = await pool.acquire()
    try:
        slow_tx = slow.transaction()
        await slow_tx.start()
        early = await append_one(slow, "slow")  # takes the lower position, commits last
        async with fast.transaction():
            late = await append_one(fast, "fast")
        assert late.position > early.position

        # While the slow transaction runs, the reader must not move past it.
        assert await read_events(reader, Checkpoint()) == []
        await slow_tx.commit()
        read = await read_until(reader, 2)
        assert [e.idempotency_key for e in read] == ["slow", "fast"]
    finally:
        for conn in (slow, fast, reader):
            await pool.release(conn)


async def test_reader_sees_every_committed_event_once_under_racing_writers(
    pool: asyncpg.Pool,
) -> None:
    rng = random.Random(1234)
    committed: set[str] = set()
    rolled_back: set[str] = set()
    writers_done = asyncio.Event()

    async def writer(w: int) -> None:
        for i in range(25):
            keys = [f"{w}-{i}-{j}" for j in range(rng.randint(1, 3))]
            rollback = rng.random() < 0.25
            async with pool.acquire() as conn:
                tx = conn.transaction()
                await tx.start()
                await append_events(conn, [NewEvent(WidgetCounted(writer=w, n=i), k) for k in keys])
                # Some transactions are deliberately slow, so later ones commit before them.
                await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005, 0.05]))
                if rollback:
                    await tx.rollback()
                    rolled_back.update(keys)
                else:
                    await tx.commit()
                    committed.update(keys)

    seen: list[str] = []

    async def reader() -> None:
        checkpoint = Checkpoint()
        loop = asyncio.get_running_loop()
        deadline = float("inf")
        async with pool.acquire() as conn:
            while True:
                done = writers_done.is_set()
                if done and deadline == float("inf"):
                    deadline = loop.time() + CATCH_UP_SECONDS
                batch = await read_events(conn, checkpoint, limit=rng.randint(1, 7))
                seen.extend(e.idempotency_key for e in batch)
                if batch:
                    checkpoint = checkpoint_of(batch[-1])
                elif done and (set(seen) >= committed or loop.time() > deadline):
                    return
                else:
                    await asyncio.sleep(0.001)

    reading = asyncio.create_task(reader())
    await asyncio.gather(*(writer(w) for w in range(12)))
    writers_done.set()
    await reading
    assert len(seen) == len(set(seen)), "an event was read twice"
    assert set(seen) == committed, "a committed event was skipped"
    assert not set(seen) & rolled_back
    assert len(committed) > 100 and rolled_back


async def test_shards_partition_the_log_by_tenant(pool: asyncpg.Pool) -> None:
    tenants = [uuid.uuid4() for _ in range(30)]
    async with pool.acquire() as conn, conn.transaction():
        await append_events(
            conn,
            [
                NewEvent(WidgetCounted(writer=0, n=i, tenant_id=t), f"t-{i}")
                for i, t in enumerate(tenants)
            ]
            + [NewEvent(WidgetCounted(writer=0, n=-1), "platform-wide")],
        )
    by_shard: list[list[StoredEvent]] = []
    async with pool.acquire() as conn:
        await read_until(conn, 31)
        for index in range(3):
            by_shard.append(await read_events(conn, Checkpoint(), shard=Shard(index, 3)))
    keys = [e.idempotency_key for shard in by_shard for e in shard]
    assert sorted(keys) == sorted([f"t-{i}" for i in range(30)] + ["platform-wide"])
    assert "platform-wide" in {e.idempotency_key for e in by_shard[0]}
    for shard in by_shard:  # each tenant lives in exactly one shard
        assert shard, "30 tenants should reach every one of 3 shards"
    tenants_per_shard = [{e.tenant_id for e in s} - {None} for s in by_shard]
    assert not (
        tenants_per_shard[0] & tenants_per_shard[1] or tenants_per_shard[1] & tenants_per_shard[2]
    )


async def test_a_consumer_applies_each_event_exactly_once_across_reruns(pool: asyncpg.Pool) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS widget_projection (position bigint PRIMARY KEY)")
    async with pool.acquire() as conn, conn.transaction():
        await append_events(
            conn, [NewEvent(WidgetCounted(writer=0, n=i), f"c-{i}") for i in range(45)]
        )

    async def project(conn: asyncpg.Connection, batch: Sequence[StoredEvent]) -> None:
        # No ON CONFLICT: applying an event twice would raise here.
        await conn.executemany(
            "INSERT INTO widget_projection VALUES ($1)", [(e.position,) for e in batch]
        )

    results = await asyncio.gather(
        *(consume_batch(pool, "widgets", project, limit=10) for _ in range(8))
    )
    await drain(pool, project, limit=10, expected=45)
    assert sum(results) <= 45
    assert await pool.fetchval("SELECT count(*) FROM widget_projection") == 45
    assert await consume_batch(pool, "widgets", project) == 0


async def test_a_read_ahead_is_used_only_from_the_checkpoint_it_was_read_after(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await append_events(
            conn, [NewEvent(WidgetCounted(writer=0, n=i), f"ra-{i}") for i in range(9)]
        )
    async with pool.acquire() as conn:
        await read_until(conn, 9)  # readable: the horizon passed the append
    seen: list[Sequence[StoredEvent]] = []

    async def record(conn: asyncpg.Connection, batch: Sequence[StoredEvent]) -> None:
        seen.append(batch)

    first = await read_ahead(pool, Checkpoint(), limit=4)
    stale = await read_ahead(pool, Checkpoint(), limit=4)
    assert await consume_batch(pool, "widgets-ahead", record, limit=4, ahead=first) == 4
    assert seen[0] is first.events  # taken as read: the checkpoint was where it started
    # The checkpoint moved past `stale`'s start: those events are not applied again.
    assert await consume_batch(pool, "widgets-ahead", record, limit=4, ahead=stale) == 4
    async with pool.acquire() as conn:
        expected = await read_events(conn, checkpoint_of(first.events[-1]), limit=4)
    assert [e.position for e in seen[1]] == [e.position for e in expected]
    nxt = await read_ahead(pool, checkpoint_of(seen[1][-1]), limit=4)
    assert await consume_batch(pool, "widgets-ahead", record, limit=4, ahead=nxt) == 1
    assert seen[2] is nxt.events
    positions = [e.position for batch in seen for e in batch]
    assert positions == sorted(set(positions)) and len(positions) == 9


async def test_a_consumer_killed_before_its_checkpoint_resumes_without_double_applying(
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    await pool.execute("CREATE TABLE IF NOT EXISTS widget_projection (position bigint PRIMARY KEY)")
    async with pool.acquire() as conn, conn.transaction():
        await append_events(
            conn, [NewEvent(WidgetCounted(writer=0, n=i), f"k-{i}") for i in range(30)]
        )

    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.eventlog.consumer_process", database_url],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 60)
        assert line.strip() == "written"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    async def project(conn: asyncpg.Connection, batch: Sequence[StoredEvent]) -> None:
        await conn.executemany(
            "INSERT INTO widget_projection VALUES ($1)", [(e.position,) for e in batch]
        )

    # Its writes died with it; the checkpoint never moved; a new run applies everything once.
    await drain(pool, project, limit=7, expected=30)
    positions = [
        r[0] for r in await pool.fetch("SELECT position FROM widget_projection ORDER BY 1")
    ]
    assert len(positions) == 30


async def test_the_notifier_wakes_a_consumer_when_an_append_commits(
    pool: asyncpg.Pool,
    database_url: str,
) -> None:
    notifier = EventNotifier(database_url)
    await notifier.start()
    try:
        assert await notifier.wait(0.05) is False  # nothing appended: the poll timeout passes

        async def append_soon() -> None:
            await asyncio.sleep(0.05)
            async with pool.acquire() as conn, conn.transaction():
                await append_one(conn, "wake")

        task = asyncio.create_task(append_soon())
        assert await notifier.wait(30) is True
        await task
    finally:
        await notifier.close()
