"""`tally replay --verify`: rebuild every money projection from the log and compare.

The rebuild runs on one dedicated connection whose temporary tables shadow the live ones (a
temporary table is found before `public` by name), so it executes the fold's own code and SQL
(`fold_events`) and never touches a live row. It replays each shard up to that shard's live
checkpoint, then takes the live fold's consumer locks (live folds wait; the gateway does not),
catches up to the checkpoints as they are now, rebuilds the price book from its events and
compares every table row for row. Anything different is reported, with samples.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import asyncpg
import msgspec

from billing.fold import repository
from billing.fold.service import PriceBookCache, fold_events
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
    "usage_rollups": ("tenant_id", "key_id", "model", "hour", *repository.ROLLUP_COUNTERS),
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


class _ReplayFailed(Exception):
    pass


async def _create_scratch(conn: Connection) -> None:
    for table in (*MONEY_TABLES, *PRICE_BOOK_TABLES):
        await conn.execute(f"CREATE TEMP TABLE {table} (LIKE public.{table} INCLUDING ALL)")


async def _rebuild_price_book(conn: Connection) -> None:
    """The four price-book tables from their events (written in the transaction of each)."""
    for table in PRICE_BOOK_TABLES:
        await conn.execute(f"TRUNCATE pg_temp.{table}")
    rows = await conn.fetch(_PRICE_EVENTS, _PRICE_EVENT_TYPES)
    for row in rows:
        event = stored_from_row(row).event
        if isinstance(event, PriceChanged):
            await conn.execute(
                "INSERT INTO pg_temp.model_prices (model, price_version, price, margin_pct,"
                " effective_at) VALUES ($1, $2, $3::text::jsonb, $4, $5)",
                event.model,
                event.price_version,
                msgspec.json.encode(event.price).decode(),
                event.margin_pct,
                event.effective_at,
            )
        elif isinstance(event, DefaultMarginChanged):
            await conn.execute(
                "INSERT INTO pg_temp.default_margins (price_version, margin_pct) VALUES ($1, $2)",
                event.price_version,
                event.margin_pct,
            )
        elif isinstance(event, CreditPriceChanged):
            await conn.execute(
                "INSERT INTO pg_temp.credit_prices (price_version, credit_price_usd)"
                " VALUES ($1, $2)",
                event.price_version,
                event.credit_price_usd,
            )
        elif isinstance(event, TenantMarginOverridden):
            await conn.execute(
                "INSERT INTO pg_temp.tenant_margins (tenant_id, price_version, margin_pct)"
                " VALUES ($1, $2, $3)",
                event.tenant_id,
                event.price_version,
                event.margin_pct,
            )


class _ShardReplayer:
    """Replays one shard into the scratch tables, never past a target checkpoint."""

    def __init__(self, shard: Shard, books: PriceBookCache, batch_size: int) -> None:
        self.shard = shard
        self.position = Checkpoint()
        self._books = books
        self._batch_size = batch_size
        self.events = 0
        self.errors: list[str] = []

    async def run_to(self, conn: Connection, target: Checkpoint, *, in_transaction: bool) -> None:
        while self.position < target:
            events = await read_events(
                conn, self.position, limit=self._batch_size, shard=self.shard
            )
            batch: Sequence[StoredEvent] = [e for e in events if checkpoint_of(e) <= target]
            if not batch:
                # The target's events are committed and below the horizon, so this means the
                # live checkpoint points past the end of the log: nothing more to replay.
                return
            try:
                if in_transaction:
                    await fold_events(conn, batch, self._books, check_invariants=True)
                else:
                    async with conn.transaction():
                        await fold_events(conn, batch, self._books, check_invariants=True)
            except AssertionError as exc:
                self.errors.append(f"shard {self.shard.index}: conservation broke: {exc}")
                raise _ReplayFailed from exc
            self.events += len(batch)
            self.position = checkpoint_of(batch[-1])


async def _diff(conn: Connection, table: str, columns: Sequence[str]) -> TableDiff:
    cols = ", ".join(columns)
    live_only = f"SELECT {cols} FROM public.{table} EXCEPT ALL SELECT {cols} FROM pg_temp.{table}"  # noqa: S608
    replay_only = f"SELECT {cols} FROM pg_temp.{table} EXCEPT ALL SELECT {cols} FROM public.{table}"  # noqa: S608
    live_rows = await conn.fetchval(f"SELECT count(*) FROM public.{table}")  # noqa: S608
    replayed_rows = await conn.fetchval(f"SELECT count(*) FROM pg_temp.{table}")  # noqa: S608
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


async def replay_verify(database_url: str, *, batch_size: int = 5000) -> ReplayReport:
    """Rebuild every money projection and the price book from the log; compare with live."""
    started = time.perf_counter()
    conn = await asyncpg.connect(database_url)
    try:
        return await _replay(conn, batch_size, started)
    finally:
        await conn.close()


async def _replay(conn: Connection, batch_size: int, started: float) -> ReplayReport:
    shard_count = await conn.fetchval(_LAYOUT)
    if shard_count is None:
        shard_count = 1  # nothing folded yet: any count compares empty with empty
    consumers = [fold_consumer_name(i, shard_count) for i in range(shard_count)]
    await _create_scratch(conn)
    books = PriceBookCache()
    replayers = [
        _ShardReplayer(Shard(i, shard_count), books, batch_size) for i in range(shard_count)
    ]
    errors: list[str] = []
    # Phase 1, no locks: the bulk of the log, up to where the live fold is now.
    async with conn.transaction():
        await _rebuild_price_book(conn)
    try:
        for replayer, consumer in zip(replayers, consumers, strict=True):
            await replayer.run_to(conn, await load_checkpoint(conn, consumer), in_transaction=False)
        # Phase 2: hold the live fold still, catch up, compare.
        async with conn.transaction():
            for consumer in consumers:
                await conn.execute(_LOCK_CONSUMER, consumer)
            await _rebuild_price_book(conn)
            for replayer, consumer in zip(replayers, consumers, strict=True):
                await replayer.run_to(
                    conn, await load_checkpoint(conn, consumer), in_transaction=True
                )
            rebuilt = time.perf_counter()
            tables = {
                table: await _diff(conn, table, columns)
                for table, columns in (*PRICE_BOOK_TABLES.items(), *MONEY_TABLES.items())
            }
            violations = await conn.fetchval(_CONSERVATION)
            compared = time.perf_counter()
    except _ReplayFailed:
        errors = [e for r in replayers for e in r.errors]
        return ReplayReport(
            ok=False,
            events_replayed=sum(r.events for r in replayers),
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
        events_replayed=sum(r.events for r in replayers),
        shards=shard_count,
        seconds=round(time.perf_counter() - started, 3),
        rebuild_seconds=round(rebuilt - started, 3),
        compare_seconds=round(compared - rebuilt, 3),
        tables=tables,
        conservation_violations=violations,
        invariant_errors=errors,
    )
    if not ok:
        log.error("replay differs from the live projections", report=msgspec.to_builtins(report))
    return report
