"""Gap-safe reading of the log, consumer checkpoints and commit wake-ups.

Positions come from a sequence, so they are handed out in insert order but become visible in
commit order: a slow transaction can commit position 10 after position 11 was read. Reading in
position order would skip 10 forever. Instead readers order by (transaction id, position) and
read only events whose transaction id is below the oldest transaction still running
(`pg_snapshot_xmin`): every such transaction has finished, so nothing can appear before the
read point any more (design invariant 6).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import asyncpg
import msgspec

from tally.db import Connection
from tally.eventlog.store import NOTIFY_CHANNEL, StoredEvent, stored_from_row


class Checkpoint(msgspec.Struct, frozen=True, order=True):
    """A reader's place in the log: the (txid, position) of the last event it consumed."""

    txid: int = 0
    position: int = 0


class Shard(msgspec.Struct, frozen=True):
    """Tenant-hash shard `index` of `count`; tenant-less events belong to shard 0."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"shard index {self.index} outside 0..{self.count - 1}")


_READ = """
SELECT position, txid::text::bigint AS txid, type, schema_version, tenant_id, idempotency_key,
       data::text AS data, recorded_at
FROM events
WHERE (txid, position) > ($1::text::xid8, $2)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())
  AND ($4::int IS NULL OR
       CASE WHEN tenant_id IS NULL THEN $5::int = 0
            ELSE mod(hashtextextended(tenant_id::text, 0) & 9223372036854775807, $4) = $5
       END)
ORDER BY events.txid, events.position  -- the columns, not the bigint aliases above
LIMIT $3
"""

_LOCK_CONSUMER = "SELECT pg_advisory_xact_lock(hashtextextended('consumer:' || $1, 0))"
_LOAD_CHECKPOINT = (
    "SELECT txid::text::bigint AS txid, position FROM consumer_checkpoints WHERE consumer = $1"
)
_SAVE_CHECKPOINT = """
INSERT INTO consumer_checkpoints (consumer, txid, position, updated_at)
VALUES ($1, $2::text::xid8, $3, now())
ON CONFLICT (consumer) DO UPDATE
SET txid = EXCLUDED.txid, position = EXCLUDED.position, updated_at = EXCLUDED.updated_at
"""


async def read_events(
    conn: Connection,
    after: Checkpoint,
    *,
    limit: int = 1000,
    shard: Shard | None = None,
) -> list[StoredEvent]:
    """The next committed events after `after`, oldest first, never skipping a late commit."""
    return [stored_from_row(row) for row in await _read_rows(conn, after, limit, shard)]


async def _read_rows(
    conn: Connection, after: Checkpoint, limit: int, shard: Shard | None
) -> list[asyncpg.Record]:
    return await conn.fetch(
        _READ,
        str(after.txid),
        after.position,
        limit,
        shard.count if shard else None,
        shard.index if shard else None,
    )


def checkpoint_of(event: StoredEvent) -> Checkpoint:
    return Checkpoint(event.txid, event.position)


async def load_checkpoint(conn: Connection, consumer: str) -> Checkpoint:
    row = await conn.fetchrow(_LOAD_CHECKPOINT, consumer)
    return Checkpoint(row["txid"], row["position"]) if row else Checkpoint()


async def save_checkpoint(conn: Connection, consumer: str, at: Checkpoint) -> None:
    await conn.execute(_SAVE_CHECKPOINT, consumer, str(at.txid), at.position)


Handler = Callable[[Connection, Sequence[StoredEvent]], Awaitable[None]]


class ReadAhead(msgspec.Struct, frozen=True):
    """Events read outside a consumer's transaction: the batch that follows `after`."""

    after: Checkpoint
    events: list[StoredEvent]


# Rows decoded between yields to the event loop: a read-ahead runs beside a consumer's work
# and must not hold the loop for a whole batch.
_DECODE_SLICE = 500


async def read_ahead(
    pool: asyncpg.Pool, after: Checkpoint, *, limit: int = 1000, shard: Shard | None = None
) -> ReadAhead:
    """Read the batch after `after` on a connection of its own, for `consume_batch` to use.

    A consumer starts this once it knows where its current batch ends, so the next batch's
    read and decoding overlap the current batch's work.
    """
    async with pool.acquire() as conn:
        rows = await _read_rows(conn, after, limit, shard)
    events: list[StoredEvent] = []
    for start in range(0, len(rows), _DECODE_SLICE):
        if start:
            await asyncio.sleep(0)
        events.extend(stored_from_row(row) for row in rows[start : start + _DECODE_SLICE])
    return ReadAhead(after, events)


async def consume_batch(
    pool: asyncpg.Pool,
    consumer: str,
    handler: Handler,
    *,
    limit: int = 1000,
    shard: Shard | None = None,
    ahead: ReadAhead | None = None,
) -> int:
    """Apply the next batch to `handler` and advance `consumer`'s checkpoint, exactly once.

    The handler's writes and the checkpoint commit in one transaction: a crash anywhere before
    the commit leaves neither, so the batch is read again and applied once. An advisory lock
    makes concurrent runs of one consumer take turns instead of applying a batch twice.
    `ahead` (from `read_ahead`) is used instead of reading when it starts at the checkpoint.
    Returns the number of events applied (0 when caught up).
    """
    async with pool.acquire() as conn, conn.transaction():
        # The advisory lock assigns no transaction id, so our own transaction does not hold
        # back the snapshot horizon the read below relies on.
        await conn.execute(_LOCK_CONSUMER, consumer)
        checkpoint = await load_checkpoint(conn, consumer)
        if ahead is not None and ahead.events and ahead.after == checkpoint:
            # Read before this transaction, but from the same checkpoint and gap-safely: every
            # event below that read's horizon was final, and anything committed since sorts
            # after them, so they are exactly what reading now would return first. Read again
            # when the checkpoint moved (another run of this consumer got there first).
            events: Sequence[StoredEvent] = (
                ahead.events if len(ahead.events) <= limit else ahead.events[:limit]
            )
        else:
            events = await read_events(conn, checkpoint, limit=limit, shard=shard)
        if not events:
            return 0
        await handler(conn, events)
        await save_checkpoint(conn, consumer, checkpoint_of(events[-1]))
        return len(events)


class EventNotifier:
    """Wakes consumers within milliseconds of a commit (LISTEN/NOTIFY), polling as fallback.

    A consumer calls `wait(timeout)`: it returns early when an append commits, and after
    `timeout` seconds otherwise, so a lost notification (or a lost connection) only delays.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Connection | None = None
        self._signal = asyncio.Event()

    async def start(self) -> None:
        self._conn = await asyncpg.connect(self._dsn)
        await self._conn.add_listener(NOTIFY_CHANNEL, self._on_notify)

    def _on_notify(self, *_args: object) -> None:
        self._signal.set()

    async def wait(self, timeout: float) -> bool:
        """True when woken by a commit, False when the timeout passed."""
        try:
            await asyncio.wait_for(self._signal.wait(), timeout)
        except TimeoutError:
            woke = False
        else:
            woke = True
        self._signal.clear()
        if self._conn is not None and self._conn.is_closed():
            # Reconnect lazily; until then the timeout is the polling fallback.
            try:
                await self.start()
            except (OSError, asyncpg.PostgresError):
                self._conn = None
        return woke

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()
        self._conn = None
