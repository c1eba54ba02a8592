"""`tally replay --verify`: rebuild every money projection from the log and compare.

The rebuild writes into a scratch schema (unlogged copies of the projection tables, dropped at
the end) that comes first on the search path of replay's connections, so it runs the fold's
own code and SQL (`fold_events`) and never touches a live row. The log is split by tenant hash
into partitions replayed in parallel processes, each up to its live shard's checkpoint (a
tenant's events keep their order within its partition). Then replay takes the live fold's
consumer locks (live folds wait; the gateway does not), catches up to the checkpoints as they
are now, rebuilds the price book from its events and compares every table row for row.
Anything different is reported, with samples.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import asyncpg
import msgspec

from billing.fold import repository
from billing.fold.service import PriceBookCache, collector_paused, fold_events
from tally.db import Connection
from tally.eventlog import Checkpoint, Shard, StoredEvent, read_events
from tally.eventlog.reader import checkpoint_of, load_checkpoint
from tally.eventlog.store import stored_from_row
from tally.events.billing import CreditPriceChanged, DefaultMarginChanged, PriceChanged
from tally.events.tenant import TenantMarginOverridden
from tally.live_balance import fold_consumer_name
from tally.log import get_logger

log = get_logger(__name__)

# Every projection the log rebuilds, with the columns that must match (wall-clock columns such
# as updated_at are left out: they record when a row was written, not what it says).
MONEY_TABLES: dict[str, tuple[str, ...]] = {
    "balances": (
        "tenant_id",
        "balance_nano",
        "folded_events",
        "last_position",
        "granted_nano",
        "purchased_nano",
        "adjusted_nano",
        "refunded_nano",
        "expired_nano",
        "charged_nano",
        "frozen_nano",
        "dispute_lost_nano",
        "debt_usage_nano",
        "debt_other_nano",
        "claims",
    ),
    "credit_lots": (
        "tenant_id",
        "lot_id",
        "source",
        "funding",
        "reference",
        "amount_nano",
        "remaining_nano",
        "frozen_nano",
        "expires_at",
        "opened_position",
        "opened_at",
        "expired_position",
        "expired_nano",
    ),
    "ledger_entries": repository.LEDGER_COLUMNS,
    "usage_rollups": (*repository.ROLLUP_KEY, *repository.ROLLUP_COUNTERS),
    "credit_consumption_daily": ("tenant_id", "day", "funding", "reason", "amount_nano"),
    "pricing_mismatches": (
        "position",
        "tenant_id",
        "request_id",
        "model",
        "price_version",
        "reason",
        "recorded_charge_nano",
        "recomputed_charge_nano",
        "recorded_base_nano",
        "recomputed_base_nano",
        "charged_nano",
        "occurred_at",
    ),
}
PRICE_BOOK_TABLES: dict[str, tuple[str, ...]] = {
    "model_prices": ("model", "price_version", "price", "margin_pct", "effective_at"),
    "default_margins": ("price_version", "margin_pct"),
    "credit_prices": ("price_version", "credit_price_usd"),
    "tenant_margins": ("tenant_id", "price_version", "margin_pct"),
}
_PRICE_EVENT_TYPES = [
    "PriceChanged",
    "DefaultMarginChanged",
    "CreditPriceChanged",
    "TenantMarginOverridden",
]
_PRICE_EVENTS = """
SELECT position, txid::text::bigint AS txid, type, schema_version, tenant_id, idempotency_key,
       data::text AS data, recorded_at
FROM events WHERE type = ANY($1::text[]) ORDER BY events.txid, events.position
"""
_LOCK_CONSUMER = "SELECT pg_advisory_xact_lock(hashtextextended('consumer:' || $1, 0))"
_LAYOUT = "SELECT shard_count FROM fold_layout"
_CONSERVATION = """
SELECT count(*) FROM public.balances
WHERE balance_nano <> granted_nano + purchased_nano + adjusted_nano - refunded_nano
      - expired_nano - charged_nano - frozen_nano - dispute_lost_nano
"""


class TableDiff(msgspec.Struct, kw_only=True):
    live_rows: int
    replayed_rows: int
    differences: int
    # A few rows present on one side only, as text.
    only_live: list[str] = msgspec.field(default_factory=list)
    only_replayed: list[str] = msgspec.field(default_factory=list)


class ReplayReport(msgspec.Struct, kw_only=True):
    ok: bool
    events_replayed: int
    shards: int
    seconds: float
    # Of which: rebuilding the projections from the log, and comparing them with the live ones.
    rebuild_seconds: float
    compare_seconds: float
    tables: dict[str, TableDiff]
    conservation_violations: int
    invariant_errors: list[str]
    # Parallel processes (partitions of the log by tenant hash) the rebuild used.
    workers: int = 1


class _ReplayFailed(Exception):
    pass


async def _create_scratch(conn: Connection, schema: str) -> None:
    # Unlogged: nothing here needs to survive a crash, and skipping the WAL halves the writes.
    await conn.execute(f"CREATE SCHEMA {schema}")
    for table in (*MONEY_TABLES, *PRICE_BOOK_TABLES):
        await conn.execute(
            f"CREATE UNLOGGED TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)"
        )


async def _rebuild_price_book(conn: Connection, schema: str) -> None:
    """The four price-book tables from their events (written in the transaction of each)."""
    for table in PRICE_BOOK_TABLES:
        await conn.execute(f"TRUNCATE {schema}.{table}")
    rows = await conn.fetch(_PRICE_EVENTS, _PRICE_EVENT_TYPES)
    for row in rows:
        event = stored_from_row(row).event
        if isinstance(event, PriceChanged):
            await conn.execute(
                f"INSERT INTO {schema}.model_prices (model, price_version, price, margin_pct,"  # noqa: S608
                " effective_at) VALUES ($1, $2, $3::text::jsonb, $4, $5)",
                event.model,
                event.price_version,
                msgspec.json.encode(event.price).decode(),
                event.margin_pct,
                event.effective_at,
            )
        elif isinstance(event, DefaultMarginChanged):
            await conn.execute(
                f"INSERT INTO {schema}.default_margins (price_version, margin_pct)"  # noqa: S608
                " VALUES ($1, $2)",
                event.price_version,
                event.margin_pct,
            )
        elif isinstance(event, CreditPriceChanged):
            await conn.execute(
                f"INSERT INTO {schema}.credit_prices (price_version, credit_price_usd)"  # noqa: S608
                " VALUES ($1, $2)",
                event.price_version,
                event.credit_price_usd,
            )
        elif isinstance(event, TenantMarginOverridden):
            await conn.execute(
                f"INSERT INTO {schema}.tenant_margins (tenant_id, price_version, margin_pct)"  # noqa: S608
                " VALUES ($1, $2, $3)",
                event.tenant_id,
                event.price_version,
                event.margin_pct,
            )


class _Partition:
    """Replays one tenant-hash partition into the scratch tables, never past its target."""

    def __init__(self, shard: Shard, books: PriceBookCache, batch_size: int) -> None:
        self.shard = shard
        self.position = Checkpoint()
        self._books = books
        self._batch_size = batch_size
        self.events = 0
        self.errors: list[str] = []

    async def run_to(self, conn: Connection, target: Checkpoint, *, in_transaction: bool) -> None:
        while self.position < target:
            async with collector_paused():
                if not await self._next_batch(conn, target, in_transaction=in_transaction):
                    return

    async def _next_batch(
        self, conn: Connection, target: Checkpoint, *, in_transaction: bool
    ) -> bool:
        """Replay the next batch; False when there is nothing more to replay."""
        events = await read_events(conn, self.position, limit=self._batch_size, shard=self.shard)
        batch: Sequence[StoredEvent] = [e for e in events if checkpoint_of(e) <= target]
        if not batch:
            # The target's events are committed and below the horizon, so this means the
            # live checkpoint points past the end of the log: nothing more to replay.
            return False
        try:
            if in_transaction:
                await fold_events(conn, batch, self._books, check_invariants=True)
            else:
                async with conn.transaction():
                    await fold_events(conn, batch, self._books, check_invariants=True)
        except AssertionError as exc:
            self.errors.append(f"partition {self.shard.index}: conservation broke: {exc}")
            raise _ReplayFailed from exc
        self.events += len(batch)
        self.position = checkpoint_of(batch[-1])
        return True


async def _connect(database_url: str, schema: str) -> Connection:
    # The scratch schema first: the fold's unqualified table names resolve to it.
    conn: Connection = await asyncpg.connect(
        database_url, server_settings={"search_path": f"{schema}, public"}
    )
    return conn


async def _replay_partition(
    database_url: str, schema: str, index: int, count: int, target: Checkpoint, batch_size: int
) -> tuple[int, Checkpoint, list[str]]:
    conn = await _connect(database_url, schema)
    partition = _Partition(Shard(index, count), PriceBookCache(), batch_size)
    try:
        await partition.run_to(conn, target, in_transaction=False)
    except _ReplayFailed:
        pass
    finally:
        await conn.close()
    return partition.events, partition.position, partition.errors


def _replay_partition_in_process(
    args: tuple[str, str, int, int, Checkpoint, int],
) -> tuple[int, Checkpoint, list[str]]:
    from tally.gc_tuning import tune_garbage_collector

    tune_garbage_collector()
    return asyncio.run(_replay_partition(*args))


async def _diff(conn: Connection, schema: str, table: str, columns: Sequence[str]) -> TableDiff:
    cols = ", ".join(columns)
    live, scratch = f"public.{table}", f"{schema}.{table}"
    live_only = f"SELECT {cols} FROM {live} EXCEPT ALL SELECT {cols} FROM {scratch}"  # noqa: S608
    replay_only = f"SELECT {cols} FROM {scratch} EXCEPT ALL SELECT {cols} FROM {live}"  # noqa: S608
    live_rows = await conn.fetchval(f"SELECT count(*) FROM {live}")  # noqa: S608
    replayed_rows = await conn.fetchval(f"SELECT count(*) FROM {scratch}")  # noqa: S608
    a = await conn.fetchval(f"SELECT count(*) FROM ({live_only}) d")  # noqa: S608
    b = await conn.fetchval(f"SELECT count(*) FROM ({replay_only}) d")  # noqa: S608
    diff = TableDiff(live_rows=live_rows, replayed_rows=replayed_rows, differences=a + b)
    if a:
        rows = await conn.fetch(f"SELECT d::text FROM ({live_only} LIMIT 5) d")  # noqa: S608
        diff.only_live = [r[0] for r in rows]
    if b:
        rows = await conn.fetch(f"SELECT d::text FROM ({replay_only} LIMIT 5) d")  # noqa: S608
        diff.only_replayed = [r[0] for r in rows]
    return diff


# Below this many events the partitions replay in this process: starting processes would cost
# more than it saves.
_PARALLEL_FROM_EVENTS = 100_000


async def replay_verify(
    database_url: str, *, batch_size: int = 20_000, workers: int | None = None
) -> ReplayReport:
    """Rebuild every money projection and the price book from the log; compare with live.

    `workers`: processes replaying partitions in parallel (default: the CPU count, at most 4;
    small logs replay in this process).
    """
    started = time.perf_counter()
    schema = f"tally_replay_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn = await _connect(database_url, schema)
    try:
        return await _replay(conn, database_url, schema, batch_size, workers, started)
    finally:
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


async def _replay(
    conn: Connection,
    database_url: str,
    schema: str,
    batch_size: int,
    workers: int | None,
    started: float,
) -> ReplayReport:
    shard_count = await conn.fetchval(_LAYOUT)
    if shard_count is None:
        shard_count = 1  # nothing folded yet: any count compares empty with empty
    consumers = [fold_consumer_name(i, shard_count) for i in range(shard_count)]
    await _create_scratch(conn, schema)
    async with conn.transaction():
        await _rebuild_price_book(conn, schema)
    targets = [await load_checkpoint(conn, consumer) for consumer in consumers]
    if workers is None:
        workers = min(os.cpu_count() or 1, 4)
        if await conn.fetchval("SELECT count(*) FROM events") < _PARALLEL_FROM_EVENTS:
            workers = 1
    # Partitions: a multiple of the live shard count, so each lies inside one live shard
    # (hash mod count is fixed by hash mod a multiple of count).
    count = shard_count * math.ceil(workers / shard_count)
    partitions = [_Partition(Shard(k, count), PriceBookCache(), batch_size) for k in range(count)]
    # Phase 1, no locks: the bulk of the log, up to where the live fold is now.
    try:
        if workers > 1:
            jobs = [
                (database_url, schema, k, count, targets[k % shard_count], batch_size)
                for k in range(count)
            ]
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
                loop = asyncio.get_running_loop()
                results = await asyncio.gather(
                    *(loop.run_in_executor(pool, _replay_partition_in_process, job) for job in jobs)
                )
            for partition, (events, position, errors) in zip(partitions, results, strict=True):
                partition.events, partition.position, partition.errors = events, position, errors
                if errors:
                    raise _ReplayFailed
        else:
            for k, partition in enumerate(partitions):
                await partition.run_to(conn, targets[k % shard_count], in_transaction=False)
        # Phase 2: hold the live fold still, catch up, compare.
        async with conn.transaction():
            for consumer in consumers:
                await conn.execute(_LOCK_CONSUMER, consumer)
            await _rebuild_price_book(conn, schema)
            targets = [await load_checkpoint(conn, consumer) for consumer in consumers]
            for k, partition in enumerate(partitions):
                await partition.run_to(conn, targets[k % shard_count], in_transaction=True)
            rebuilt = time.perf_counter()
            tables = {
                table: await _diff(conn, schema, table, columns)
                for table, columns in (*PRICE_BOOK_TABLES.items(), *MONEY_TABLES.items())
            }
            violations = await conn.fetchval(_CONSERVATION)
            compared = time.perf_counter()
    except _ReplayFailed:
        errors = [e for p in partitions for e in p.errors]
        return ReplayReport(
            ok=False,
            events_replayed=sum(p.events for p in partitions),
            shards=shard_count,
            seconds=round(time.perf_counter() - started, 3),
            rebuild_seconds=round(time.perf_counter() - started, 3),
            compare_seconds=0.0,
            tables={},
            conservation_violations=0,
            invariant_errors=errors,
        )
    ok = violations == 0 and all(t.differences == 0 for t in tables.values())
    report = ReplayReport(
        ok=ok,
        events_replayed=sum(p.events for p in partitions),
        shards=shard_count,
        seconds=round(time.perf_counter() - started, 3),
        rebuild_seconds=round(rebuilt - started, 3),
        compare_seconds=round(compared - rebuilt, 3),
        tables=tables,
        conservation_violations=violations,
        invariant_errors=[],
        workers=workers,
    )
    if not ok:
        log.error("replay differs from the live projections", report=msgspec.to_builtins(report))
    return report
