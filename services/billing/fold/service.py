"""The billing fold: the log, shard by shard, into balances, ledger, rollups and lots.

`fold_events` is the one code path from events to projections; the live fold (`Folder`, run by
ARQ jobs) and `tally replay` both call it. The live fold reads each shard with
`tally.eventlog.consume_batch`, so its writes and its checkpoint commit in one transaction: a
crash anywhere before the commit leaves neither, and the batch is folded again, once. After the
commit it tells Redis (the gateway's live balances) and queues low-balance webhooks; both are
idempotent, and a crash between commit and Redis is repaired by the reconcile job.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from uuid import UUID

import asyncpg

from billing.alerts import service as alerts
from billing.errors import FoldLayoutMismatch
from billing.fold import repository
from billing.fold.credits import TenantCredits
from billing.fold.projector import BatchProjection, Projector, referenced_lots
from tally.db import Connection
from tally.eventlog import (
    Checkpoint,
    ReadAhead,
    Shard,
    StoredEvent,
    consume_batch,
    read_ahead,
)
from tally.eventlog.reader import checkpoint_of
from tally.live_balance import FoldApplied, LiveBalances, fold_consumer_name
from tally.log import get_logger
from tally.pricebook import PriceBookSnapshot

log = get_logger(__name__)

DEFAULT_BATCH = 25_000


_batches_in_progress = 0
_PAUSED_YOUNG_LIMIT = 1_000_000


@asynccontextmanager
async def collector_paused() -> AsyncIterator[None]:
    """No garbage collection while a batch is decoded and folded.

    Everything a batch allocates (events, states, rows) stays alive until the batch ends and
    then goes by reference counting; a collection in between scans it all for nothing, ~10 %
    of the fold's CPU. Collection resumes when the last batch in this process ends, with the
    batch's objects already gone. Counted, so shards folding concurrently nest; should their
    batches overlap for long, a young collection still runs once a million objects piled up.
    """
    global _batches_in_progress
    if _batches_in_progress == 0:
        gc.disable()
    _batches_in_progress += 1
    try:
        yield
    finally:
        _batches_in_progress -= 1
        if _batches_in_progress == 0:
            gc.enable()
        elif gc.get_count()[0] > _PAUSED_YOUNG_LIMIT:
            gc.collect(0)


# Test hook: called with a point name ("after_writes": inside the transaction, before the
# checkpoint; "after_commit": before Redis is told). Raising there simulates a crash.
FaultHook = Callable[[str], None]
# Called after a batch committed with the ids of the notifications it created.
NotificationSink = Callable[[list[UUID]], Awaitable[None]]


class PriceBookCache:
    """The fold's in-memory price book, reloaded when a row is added to it."""

    def __init__(self) -> None:
        self._snapshot: PriceBookSnapshot | None = None

    async def current(self, conn: Connection) -> PriceBookSnapshot:
        fingerprint = await PriceBookSnapshot.current_fingerprint(conn)
        if self._snapshot is None or self._snapshot.fingerprint != fingerprint:
            self._snapshot = await PriceBookSnapshot.load(conn)
        return self._snapshot


@dataclass(slots=True, frozen=True)
class FoldedTenant:
    """A tenant's balance as a batch left it (what Redis and the alerts learn)."""

    balance_nano: int
    folded_events: int
    last_position: int


@dataclass(slots=True)
class FoldedBatch:
    """A batch folded: its tenants' states afterwards and the rows it writes."""

    # The live states (lots included); the next batch may go on changing them.
    states: dict[UUID, TenantCredits] = field(default_factory=dict)
    projection: BatchProjection = field(default_factory=BatchProjection)
    # Taken when the batch was folded, so later batches do not show through.
    tenants: dict[UUID, FoldedTenant] = field(default_factory=dict)
    state_rows: repository.StateRows = field(default_factory=lambda: ([], []))

    def applied(self) -> list[FoldApplied]:
        """What Redis must learn, per tenant touched."""
        return [
            FoldApplied(
                tenant_id=tenant_id,
                seq=tenant.folded_events,
                balance_nano=tenant.balance_nano,
                folded_request_ids=self.projection.request_ids.get(tenant_id, []),
            )
            for tenant_id, tenant in self.tenants.items()
        ]


# Events projected between yields to the event loop, so a batch's writes (another task) go on
# while the next batch is projected.
_PROJECT_SLICE = 250


async def project_events(
    conn: Connection,
    events: Sequence[StoredEvent],
    books: PriceBookCache,
    *,
    check_invariants: bool = False,
    carried: dict[UUID, TenantCredits] | None = None,
    cooperative: bool = False,
) -> FoldedBatch:
    """Fold `events` (log order) into their tenants' states and the batch's rows; no writes.

    States come from Postgres, or from `carried`: the states the previous batch left, when
    that batch is still being written (a tenant's row read now would be stale). Any other
    tenant's row is current, since only the previous batch, whose tenants are all carried,
    has uncommitted writes.
    """
    tenant_ids = list(dict.fromkeys(e.tenant_id for e in events if e.tenant_id is not None))
    if not tenant_ids:
        return FoldedBatch()
    if carried:
        fresh = [t for t in tenant_ids if t not in carried]
        states = await repository.load_states(conn, fresh) if fresh else {}
        for tenant_id in tenant_ids:
            state = carried.get(tenant_id)
            if state is not None:
                states[tenant_id] = state
    else:
        fresh = tenant_ids
        states = await repository.load_states(conn, tenant_ids)
    referenced = []
    for stored in events:
        if stored.tenant_id is not None:
            lot_id = referenced_lots(stored, states[stored.tenant_id])
            # A carried state holds every lot its tenant had open or touched.
            if lot_id is not None and lot_id not in states[stored.tenant_id].lots:
                referenced.append((stored.tenant_id, lot_id))
    if fresh or referenced:
        await repository.load_lots(conn, states, referenced, open_of=fresh)
    has_usage = any(e.type == "UsageRecorded" for e in events)
    book = await books.current(conn) if has_usage else _EMPTY_BOOK
    projector = Projector(book, check_invariants=check_invariants)
    out = BatchProjection()
    apply = projector.apply
    for start in range(0, len(events), _PROJECT_SLICE):
        if cooperative and start:
            await asyncio.sleep(0)
        for stored in events[start : start + _PROJECT_SLICE]:
            owner = stored.tenant_id
            if owner is not None:
                apply(stored, owner, states[owner], out)
    tenants = {
        tenant_id: FoldedTenant(state.balance_nano, state.folded_events, state.last_position)
        for tenant_id, state in states.items()
    }
    return FoldedBatch(states, out, tenants, repository.state_rows(states))


async def write_projection(conn: Connection, folded: FoldedBatch) -> None:
    """Write a folded batch's rows, in the caller's transaction."""
    if not folded.states:
        return
    await repository.prepare(conn)
    out = folded.projection
    await repository.save_states(conn, folded.state_rows)
    await repository.add_ledger_lines(conn, out.ledger)
    await repository.add_rollups(conn, out.rollups)
    await repository.add_consumption(conn, out.consumption)
    await repository.add_mismatches(conn, out.mismatches)


async def fold_events(
    conn: Connection,
    events: Sequence[StoredEvent],
    books: PriceBookCache,
    *,
    check_invariants: bool = False,
) -> FoldedBatch:
    """Apply `events` (log order) to the projections, in the caller's transaction."""
    folded = await project_events(conn, events, books, check_invariants=check_invariants)
    await write_projection(conn, folded)
    return folded


_EMPTY_BOOK = PriceBookSnapshot(
    model_prices=[], default_margins=[], credit_prices=[], tenant_margins=[]
)


@dataclass(slots=True)
class ShardRun:
    """What one `fold_shard` call did."""

    events: int = 0
    batches: int = 0
    caught_up: bool = False


class Folder:
    """Folds shards of the log for one process (a worker, a CLI command, a benchmark)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        shard_count: int,
        live: LiveBalances | None = None,
        batch_size: int = DEFAULT_BATCH,
        notify: NotificationSink | None = None,
        fault: FaultHook | None = None,
    ) -> None:
        self._pool = pool
        self.shard_count = shard_count
        self._live = live
        self._batch_size = batch_size
        self._notify = notify
        self._fault = fault
        self._books = PriceBookCache()
        self._layout_checked = False
        # Batches folded ahead at once in this process, each a batch more in memory. One is
        # enough: the process's Python is then busy, whatever the number of shards it folds.
        self._ahead_slots = 1

    async def check_layout(self) -> None:
        """Refuse to fold under a shard count other than the checkpoints were written with."""
        if self._layout_checked:
            return
        async with self._pool.acquire() as conn:
            recorded = await repository.ensure_layout(conn, self.shard_count)
        if recorded != self.shard_count:
            raise FoldLayoutMismatch(
                f"the fold checkpoints were written with {recorded} shards but"
                f" TALLY_FOLD_SHARDS is {self.shard_count}; set it back to {recorded}"
            )
        self._layout_checked = True

    async def fold_shard(
        self,
        index: int,
        *,
        max_batches: int | None = None,
        deadline: float | None = None,
        chase_tail: bool = True,
    ) -> ShardRun:
        """Fold shard `index` until caught up (or `max_batches` / the monotonic `deadline`).

        With `chase_tail=False` the run ends at the first batch smaller than the batch size:
        it reached the log's tail once. Under steady traffic, chasing the tail folds the few
        events that committed during the previous batch, again and again, each batch paying
        its transaction, checkpoint and Redis round trips for a handful of events; the live
        job leaves them to its next pass, which folds them together.
        """
        await self.check_layout()
        consumer = fold_consumer_name(index, self.shard_count)
        # One shard is the whole log: no per-row hash filter.
        shard = Shard(index, self.shard_count) if self.shard_count > 1 else None
        run = ShardRun()
        # What the handler produced, read once consume_batch says the batch committed.
        batch: list[tuple[FoldedBatch, list[UUID]]] = []
        # The next batch, read and folded on a second connection while this one is written:
        # Python folds while Postgres writes. Only after a full batch (catching up); a fold
        # that keeps up reads and folds each batch in its transaction, as it always did.
        ahead: asyncio.Task[tuple[ReadAhead, FoldedBatch]] | None = None
        prepared: tuple[ReadAhead, FoldedBatch] | None = None

        async def handler(conn: Connection, events: Sequence[StoredEvent]) -> None:
            nonlocal ahead
            if prepared is not None and events is prepared[0].events:
                # consume_batch took the read-ahead: the checkpoint had not moved since, so
                # the states it was folded from were the committed ones.
                folded = prepared[1]
            else:
                folded = await project_events(conn, events, self._books)
            if (
                len(events) >= self._batch_size
                and (max_batches is None or run.batches + 1 < max_batches)
                and (deadline is None or time.monotonic() < deadline)
                and self._ahead_slots > 0
            ):
                self._ahead_slots -= 1
                ahead = asyncio.create_task(
                    self._fold_ahead(checkpoint_of(events[-1]), folded.states, shard)
                )
            await write_projection(conn, folded)
            created = await alerts.detect_crossings(conn, folded.tenants, events)
            if self._fault is not None:
                self._fault("after_writes")
            batch.append((folded, created))

        # No collection while batches are in flight: their objects go by reference counting
        # once Redis was told, and the batch folded ahead is always alive, so a collection
        # between batches would scan all of it for nothing.
        try:
            async with collector_paused():
                while max_batches is None or run.batches < max_batches:
                    if deadline is not None and time.monotonic() >= deadline:
                        return run
                    batch.clear()
                    pending, ahead = ahead, None
                    prepared = None
                    if pending is not None:
                        try:
                            prepared = await pending
                        finally:
                            self._ahead_slots += 1
                    count = await consume_batch(
                        self._pool,
                        consumer,
                        handler,
                        limit=self._batch_size,
                        shard=shard,
                        ahead=prepared[0] if prepared is not None else None,
                    )
                    prepared = None
                    if count == 0:
                        run.caught_up = True
                        return run
                    run.events += count
                    run.batches += 1
                    if self._fault is not None:
                        self._fault("after_commit")
                    await self._after_commit(*batch[-1])
                    batch.clear()
                    if not chase_tail and count < self._batch_size:
                        run.caught_up = True
                        return run
                return run
        finally:
            if ahead is not None:
                # Stopped early (a deadline, an error): the batch folded ahead is dropped.
                ahead.cancel()
                await asyncio.gather(ahead, return_exceptions=True)
                self._ahead_slots += 1

    async def _fold_ahead(
        self, after: Checkpoint, carried: dict[UUID, TenantCredits], shard: Shard | None
    ) -> tuple[ReadAhead, FoldedBatch]:
        """Read and fold the batch after `after` while the batch before it is written.

        Runs beside that batch's transaction, which started after every earlier batch had
        committed: tenants it touched come from `carried`, any other from Postgres.
        Nothing is written; consume_batch uses the result only if the checkpoint is still
        `after` when the next transaction takes the consumer's lock.
        """
        read = await read_ahead(self._pool, after, limit=self._batch_size, shard=shard)
        async with self._pool.acquire() as conn:
            folded = await project_events(
                conn, read.events, self._books, carried=carried, cooperative=True
            )
        return read, folded

    async def fold_all(self) -> ShardRun:
        """Every shard until caught up, one after the other (CLI and tests)."""
        total = ShardRun(caught_up=True)
        for index in range(self.shard_count):
            run = await self.fold_shard(index)
            total.events += run.events
            total.batches += run.batches
        return total

    async def drain(self, *, timeout: float = 60.0) -> ShardRun:
        """Fold until every event committed so far is folded (CLI, tests, benchmarks).

        The gap-safe reader stops below the oldest transaction running anywhere in the
        cluster, so a caught-up fold may still leave committed events for a moment; this
        waits them out, up to `timeout` seconds.
        """
        total = ShardRun()
        deadline = time.monotonic() + timeout
        while True:
            run = await self.fold_all()
            total.events += run.events
            total.batches += run.batches
            async with self._pool.acquire() as conn:
                behind = await repository.shards_behind(conn, self.shard_count)
            if not behind:
                total.caught_up = True
                return total
            if time.monotonic() >= deadline:
                return total
            await asyncio.sleep(0.02)

    async def _after_commit(self, folded: FoldedBatch, notifications: list[UUID]) -> None:
        # Both are best effort: Redis repairs itself through reconcile, and undelivered
        # notifications are picked up by the sweeper.
        if self._live is not None and folded.tenants:
            try:
                await self._live.apply_folds(folded.applied())
            except Exception as exc:  # Redis down must not stop the fold
                log.warning("live balances not updated after fold", error=repr(exc))
        if notifications and self._notify is not None:
            try:
                await self._notify(notifications)
            except Exception as exc:
                log.warning("notification delivery not queued", error=repr(exc))
