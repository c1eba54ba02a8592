from __future__ import annotations

import asyncio
import os
import uuid

import asyncpg
import pytest

from tally.eventlog import (
    NOTIFY_CHANNEL,
    GroupCommitAppender,
    NewEvent,
    append_events,
    decode_event,
)
from tests.integration.eventlog.events import WidgetCounted, read_until


async def count_events(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM events")


async def test_appended_events_read_back_typed_and_in_order(pool: asyncpg.Pool) -> None:
    tenant = uuid.uuid4()
    async with pool.acquire() as conn, conn.transaction():
        stored = await append_events(
            conn,
            [
                NewEvent(WidgetCounted(writer=1, n=i, tenant_id=tenant, note="é ✓"), f"w-{i}")
                for i in range(3)
            ],
        )
    assert [s.event for s in stored] == [
        WidgetCounted(writer=1, n=i, tenant_id=tenant, note="é ✓") for i in range(3)
    ]
    assert [s.position for s in stored] == sorted(s.position for s in stored)
    assert all(s.tenant_id == tenant and not s.duplicate for s in stored)

    async with pool.acquire() as conn:
        read = await read_until(conn, 3)
    assert [r.event for r in read] == [s.event for s in stored]
    assert [r.type for r in read] == ["WidgetCounted"] * 3
    assert read[0].schema_version == WidgetCounted.schema_version


async def test_a_duplicate_key_is_a_no_op_returning_the_original(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        [first] = await append_events(conn, [NewEvent(WidgetCounted(writer=1, n=1), "once")])
    async with pool.acquire() as conn, conn.transaction():
        [again] = await append_events(conn, [NewEvent(WidgetCounted(writer=2, n=2), "once")])
    assert again.duplicate
    assert again.position == first.position
    assert again.event == WidgetCounted(writer=1, n=1)  # the original, not the retry's payload
    assert await count_events(pool) == 1


async def test_a_key_repeated_inside_one_batch_is_appended_once(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn, conn.transaction():
        a, b = await append_events(
            conn,
            [
                NewEvent(WidgetCounted(writer=1, n=1), "same"),
                NewEvent(WidgetCounted(writer=1, n=2), "same"),
            ],
        )
    assert not a.duplicate and b.duplicate and a.position == b.position
    assert await count_events(pool) == 1


async def test_concurrent_duplicates_of_one_key_yield_one_event(pool: asyncpg.Pool) -> None:
    async def append_in_own_transaction(i: int) -> int:
        async with pool.acquire() as conn, conn.transaction():
            [stored] = await append_events(conn, [NewEvent(WidgetCounted(writer=i, n=0), "race")])
            await asyncio.sleep(0.01)  # hold the transaction open so the others must wait
            return stored.position

    positions = await asyncio.gather(*(append_in_own_transaction(i) for i in range(16)))
    assert len(set(positions)) == 1
    assert await count_events(pool) == 1


async def test_an_append_rolled_back_with_its_transaction_leaves_nothing(
    pool: asyncpg.Pool,
) -> None:
    class Abort(Exception):
        pass

    with pytest.raises(Abort):
        async with pool.acquire() as conn, conn.transaction():
            await append_events(conn, [NewEvent(WidgetCounted(writer=1, n=1), "rolled-back")])
            raise Abort
    assert await count_events(pool) == 0
    async with pool.acquire() as conn, conn.transaction():
        [stored] = await append_events(
            conn, [NewEvent(WidgetCounted(writer=1, n=1), "rolled-back")]
        )
    assert not stored.duplicate


async def test_group_commit_batches_callers_and_each_event_is_durable_on_return(
    pool: asyncpg.Pool,
) -> None:
    batches: list[int] = []
    appender = GroupCommitAppender(pool, on_batch=lambda size, _seconds: batches.append(size))

    async def append_and_check_visible(i: int) -> None:
        stored = await appender.append(WidgetCounted(writer=i, n=i), f"gc-{i}")
        # Another connection sees it at once: the batch committed before we were resumed.
        async with pool.acquire() as conn:
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM events WHERE position = $1", stored.position
                )
                == 1
            )

    await asyncio.gather(*(append_and_check_visible(i) for i in range(500)))
    await appender.close()
    assert sum(batches) == 500
    assert len(batches) < 500 / 4, "concurrent appends should share transactions"
    assert await count_events(pool) == 500


async def test_a_failed_batch_fails_every_caller_in_it(pool: asyncpg.Pool) -> None:
    appender = GroupCommitAppender(pool, max_inflight=1)
    # An incompressible 20 kB key exceeds the btree row limit of the idempotency index, so
    # Postgres refuses the insert and the batch holding it fails as a whole.
    poison_key = os.urandom(10_000).hex()
    await appender.append(WidgetCounted(writer=9, n=9), "warm-up")
    results = await asyncio.gather(
        appender.append(WidgetCounted(writer=0, n=0), poison_key),
        *(appender.append(WidgetCounted(writer=1, n=i), f"victim-{i}") for i in range(20)),
        return_exceptions=True,
    )
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures, "the poisoned batch must fail"
    assert all(isinstance(f, asyncpg.PostgresError) for f in failures)
    stored_keys = {
        r["idempotency_key"] for r in await pool.fetch("SELECT idempotency_key FROM events")
    }
    # Every caller told "done" is in the log; every caller in the failed batch got the error.
    succeeded = {
        f"victim-{i}" for i, r in enumerate(results[1:]) if not isinstance(r, BaseException)
    }
    assert stored_keys == {"warm-up"} | succeeded
    # The appender keeps working after a failed batch.
    stored = await appender.append(WidgetCounted(writer=2, n=2), "after")
    assert not stored.duplicate
    await appender.close()


async def test_duplicate_keys_through_group_commit_give_one_event(pool: asyncpg.Pool) -> None:
    appender = GroupCommitAppender(pool)
    results = await asyncio.gather(
        *(appender.append(WidgetCounted(writer=i, n=0), "one-key") for i in range(50))
    )
    await appender.close()
    assert len({r.position for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert await count_events(pool) == 1


def test_unknown_event_types_fail_loudly() -> None:
    with pytest.raises(LookupError, match="unknown event type"):
        decode_event("NoSuchThingHappened", 1, b"{}")


async def test_a_notify_interval_wakes_listeners_at_most_that_often_and_after_the_last_commit(
    pool: asyncpg.Pool, database_url: str
) -> None:
    loop = asyncio.get_running_loop()
    heard: list[float] = []
    listener = await asyncpg.connect(database_url)
    await listener.add_listener(NOTIFY_CHANNEL, lambda *_: heard.append(loop.time()))
    interval = 0.5
    appender = GroupCommitAppender(pool, notify_interval=interval)
    started = loop.time()
    for i in range(50):  # one at a time: 50 commits, each its own batch
        await appender.append(WidgetCounted(writer=1, n=i), f"quiet-{i}")
    last_commit = loop.time()
    await asyncio.sleep(interval + 0.5)
    await appender.close()
    await listener.close()
    # Without the interval every commit notifies (50); with it, one at the start and one at
    # the end of each interval the appends spanned.
    assert 2 <= len(heard) <= (last_commit - started) / interval + 3, heard
    # The last commit is announced: a listener that read the log before it is woken again.
    assert max(heard) >= last_commit
    assert await count_events(pool) == 50
