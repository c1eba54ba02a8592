"""Every statement the fold runs against its projections.

Names are unqualified on purpose: `tally replay` runs the same statements on a connection whose
temporary tables of the same names shadow the live ones, so replay uses the fold's own SQL.
Every statement is a bulk one (unnest arrays or COPY): a batch of thousands of events costs a
handful of round trips.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date, datetime
from uuid import UUID

import asyncpg
import msgspec

from billing.fold.credits import Claims, Lot, TenantCredits, Totals
from tally.db import Connection
from tally.live_balance import FOLD_CONSUMER

_LOAD_BALANCES = """
SELECT tenant_id, balance_nano, folded_events, last_position, granted_nano, purchased_nano,
       adjusted_nano, refunded_nano, expired_nano, charged_nano, frozen_nano, dispute_lost_nano,
       debt_usage_nano, debt_other_nano, claims::text AS claims
FROM balances WHERE tenant_id = ANY($1::uuid[])
"""

_LOT_COLUMNS = """tenant_id, lot_id, source, funding, reference, amount_nano, remaining_nano,
       frozen_nano, expires_at, opened_position, opened_at, expired_position, expired_nano"""

# Open lots (the partial index's predicate, word for word), plus closed lots an event names.
# Only constant column lists are interpolated into these statements.
_LOAD_LOTS = f"""
SELECT {_LOT_COLUMNS} FROM credit_lots
WHERE tenant_id = ANY($1::uuid[]) AND (remaining_nano > 0 OR frozen_nano > 0)
UNION
SELECT {_LOT_COLUMNS} FROM credit_lots
WHERE (tenant_id, lot_id) IN (SELECT * FROM unnest($2::uuid[], $3::text[]))
"""  # noqa: S608

# The three large upserts go through COPY into per-connection staging tables: COPY's binary
# encoding costs a fraction of binding the same rows as arrays, and the INSERT ... SELECT then
# upserts them in one statement. The stages empty themselves at commit (and explicitly after
# use, for replay's multi-batch transaction).
_CREATE_STAGES = """
CREATE TEMP TABLE IF NOT EXISTS fold_stage_balances (
    tenant_id uuid, balance_nano bigint, folded_events bigint, last_position bigint,
    granted_nano bigint, purchased_nano bigint, adjusted_nano bigint, refunded_nano bigint,
    expired_nano bigint, charged_nano bigint, frozen_nano bigint, dispute_lost_nano bigint,
    debt_usage_nano bigint, debt_other_nano bigint, claims text
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS fold_stage_lots (
    tenant_id uuid, lot_id text, source text, funding text, reference text, amount_nano bigint,
    remaining_nano bigint, frozen_nano bigint, expires_at timestamptz, opened_position bigint,
    opened_at timestamptz, expired_position bigint, expired_nano bigint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS fold_stage_rollups (
    tenant_id uuid, key_id uuid, model text, provider text, hour timestamptz, requests bigint,
    errors bigint,
    input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint,
    output_tokens bigint, reasoning_tokens bigint, images bigint, base_nano bigint,
    charge_nano bigint, margin_nano bigint, paid_nano bigint, promo_nano bigint,
    unfunded_nano bigint, mismatches bigint
) ON COMMIT DELETE ROWS;
"""
BALANCE_COLUMNS = (
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
)
LOT_COLUMNS = (
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
)
_SAVE_BALANCES = """
INSERT INTO balances (tenant_id, balance_nano, folded_events, last_position, granted_nano,
                      purchased_nano, adjusted_nano, refunded_nano, expired_nano, charged_nano,
                      frozen_nano, dispute_lost_nano, debt_usage_nano, debt_other_nano, claims,
                      updated_at)
SELECT tenant_id, balance_nano, folded_events, last_position, granted_nano, purchased_nano,
       adjusted_nano, refunded_nano, expired_nano, charged_nano, frozen_nano, dispute_lost_nano,
       debt_usage_nano, debt_other_nano, claims::jsonb, now()
FROM fold_stage_balances
ON CONFLICT (tenant_id) DO UPDATE SET
    balance_nano = EXCLUDED.balance_nano, folded_events = EXCLUDED.folded_events,
    last_position = EXCLUDED.last_position, granted_nano = EXCLUDED.granted_nano,
    purchased_nano = EXCLUDED.purchased_nano, adjusted_nano = EXCLUDED.adjusted_nano,
    refunded_nano = EXCLUDED.refunded_nano, expired_nano = EXCLUDED.expired_nano,
    charged_nano = EXCLUDED.charged_nano, frozen_nano = EXCLUDED.frozen_nano,
    dispute_lost_nano = EXCLUDED.dispute_lost_nano, debt_usage_nano = EXCLUDED.debt_usage_nano,
    debt_other_nano = EXCLUDED.debt_other_nano, claims = EXCLUDED.claims,
    updated_at = EXCLUDED.updated_at
"""

_SAVE_LOTS = """
INSERT INTO credit_lots (tenant_id, lot_id, source, funding, reference, amount_nano,
                         remaining_nano, frozen_nano, expires_at, opened_position, opened_at,
                         expired_position, expired_nano)
SELECT * FROM fold_stage_lots
ON CONFLICT (tenant_id, lot_id) DO UPDATE SET
    amount_nano = EXCLUDED.amount_nano, remaining_nano = EXCLUDED.remaining_nano,
    frozen_nano = EXCLUDED.frozen_nano, expired_position = EXCLUDED.expired_position,
    expired_nano = EXCLUDED.expired_nano
"""
_CLEAR_STAGES = "DELETE FROM fold_stage_balances; DELETE FROM fold_stage_lots;"

LEDGER_COLUMNS = (
    "tenant_id",
    "position",
    "kind",
    "amount_nano",
    "balance_after_nano",
    "description",
    "occurred_at",
    "reference",
    "key_id",
    "model",
    "paid_nano",
    "promo_nano",
    "unfunded_nano",
)

ROLLUP_COUNTERS = (
    "requests",
    "errors",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "images",
    "base_nano",
    "charge_nano",
    "margin_nano",
    "paid_nano",
    "promo_nano",
    "unfunded_nano",
    "mismatches",
)

ROLLUP_KEY = ("tenant_id", "key_id", "model", "provider", "hour")
_ROLLUP_COLUMNS = ", ".join((*ROLLUP_KEY, *ROLLUP_COUNTERS))
# Additive: a rollup row gets the batch's increments (exactly once, with the checkpoint).
_ADD_ROLLUPS = f"""
INSERT INTO usage_rollups ({_ROLLUP_COLUMNS}) SELECT {_ROLLUP_COLUMNS} FROM fold_stage_rollups
ON CONFLICT ({", ".join(ROLLUP_KEY)}) DO UPDATE SET
    {", ".join(f"{c} = usage_rollups.{c} + EXCLUDED.{c}" for c in ROLLUP_COUNTERS)}
"""  # noqa: S608
_CLEAR_ROLLUPS = "DELETE FROM fold_stage_rollups"

_ADD_CONSUMPTION = """
INSERT INTO credit_consumption_daily (tenant_id, day, funding, reason, amount_nano)
SELECT * FROM unnest($1::uuid[], $2::date[], $3::text[], $4::text[], $5::bigint[])
ON CONFLICT (tenant_id, day, funding, reason) DO UPDATE SET
    amount_nano = credit_consumption_daily.amount_nano + EXCLUDED.amount_nano
"""

_ADD_MISMATCHES = """
INSERT INTO pricing_mismatches (position, tenant_id, request_id, model, price_version, reason,
                                recorded_charge_nano, recomputed_charge_nano, recorded_base_nano,
                                recomputed_base_nano, charged_nano, occurred_at)
SELECT * FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                     $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[],
                     $12::timestamptz[])
"""

_ENSURE_LAYOUT = """
WITH inserted AS (
    INSERT INTO fold_layout (shard_count) VALUES ($1) ON CONFLICT (singleton) DO NOTHING
    RETURNING shard_count)
SELECT shard_count FROM inserted UNION ALL SELECT shard_count FROM fold_layout
LIMIT 1
"""

_LAYOUT = "SELECT shard_count FROM fold_layout"

# Shards with a committed event after their checkpoint (whether or not the gap-safe reader
# may read it yet).
_SHARDS_BEHIND = """
SELECT s.index FROM generate_series(0, $1 - 1) AS s(index)
LEFT JOIN consumer_checkpoints c ON c.consumer = $2 || ':' || s.index || '/' || $1
WHERE EXISTS (
    SELECT 1 FROM events e
    WHERE (e.txid, e.position) > (coalesce(c.txid, '0'::xid8), coalesce(c.position, 0))
      AND CASE WHEN e.tenant_id IS NULL THEN s.index = 0
               ELSE mod(hashtextextended(e.tenant_id::text, 0) & 9223372036854775807, $1)
                    = s.index END)
"""

_claims_decoder = msgspec.json.Decoder(Claims)
_encode = msgspec.json.encode

MismatchRow = tuple[int, UUID, str, str, int, str, int, int | None, int, int | None, int, datetime]


async def load_states(conn: Connection, tenant_ids: Sequence[UUID]) -> dict[UUID, TenantCredits]:
    """The folded state of each tenant (a fresh one for a tenant never folded), without lots."""
    states = {tenant_id: TenantCredits() for tenant_id in tenant_ids}
    for row in await conn.fetch(_LOAD_BALANCES, list(tenant_ids)):
        (
            tenant_id,
            balance,
            folded,
            last_position,
            granted,
            purchased,
            adjusted,
            refunded,
            expired,
            charged,
            frozen,
            lost,
            debt_usage,
            debt_other,
            claims,
        ) = row
        states[tenant_id] = TenantCredits(
            balance_nano=balance,
            folded_events=folded,
            last_position=last_position,
            totals=Totals(granted, purchased, adjusted, refunded, expired, charged, frozen, lost),
            debt_usage_nano=debt_usage,
            debt_other_nano=debt_other,
            claims=_claims_decoder.decode(claims),
        )
    return states


async def load_lots(
    conn: Connection,
    states: dict[UUID, TenantCredits],
    referenced: Iterable[tuple[UUID, str]],
    *,
    open_of: Iterable[UUID] | None = None,
) -> None:
    """Attach the open lots of `open_of` (default: every tenant in `states`), and the closed
    lots named in `referenced`."""
    ref_tenants: list[UUID] = []
    ref_lots: list[str] = []
    for tenant_id, lot_id in referenced:
        ref_tenants.append(tenant_id)
        ref_lots.append(lot_id)
    tenants = list(states if open_of is None else open_of)
    for row in await conn.fetch(_LOAD_LOTS, tenants, ref_tenants, ref_lots):
        (
            tenant_id,
            lot_id,
            source,
            funding,
            reference,
            amount,
            remaining,
            frozen,
            expires_at,
            opened_position,
            opened_at,
            expired_position,
            expired,
        ) = row
        states[tenant_id].attach(
            Lot(
                lot_id=lot_id,
                source=source,
                funding=funding,
                reference=reference,
                amount_nano=amount,
                remaining_nano=remaining,
                opened_position=opened_position,
                opened_at=opened_at,
                expires_at=expires_at,
                frozen_nano=frozen,
                expired_position=expired_position,
                expired_nano=expired,
            )
        )


async def prepare(conn: Connection) -> None:
    """Create this connection's staging tables if it has none yet (one round trip)."""
    await conn.execute(_CREATE_STAGES)


StateRows = tuple[list[tuple[object, ...]], list[tuple[object, ...]]]


def state_rows(states: dict[UUID, TenantCredits]) -> StateRows:
    """Every touched tenant's balance row and its changed lots, as they are now.

    Taken when a batch has been folded: a pipelined fold goes on to change the same states
    with the next batch while these rows are written. The lots count as written from here.
    """
    balances: list[tuple[object, ...]] = [
        (
            tenant_id,
            s.balance_nano,
            s.folded_events,
            s.last_position,
            s.totals.granted,
            s.totals.purchased,
            s.totals.adjusted,
            s.totals.refunded,
            s.totals.expired,
            s.totals.charged,
            s.totals.frozen,
            s.totals.dispute_lost,
            s.debt_usage_nano,
            s.debt_other_nano,
            _encode(s.claims).decode(),
        )
        for tenant_id, s in states.items()
    ]
    lots: list[tuple[object, ...]] = []
    for tenant_id, s in states.items():
        for lot in s.lots.values():
            if lot.dirty:
                lot.dirty = False
                lots.append(
                    (
                        tenant_id,
                        lot.lot_id,
                        lot.source,
                        lot.funding,
                        lot.reference,
                        lot.amount_nano,
                        lot.remaining_nano,
                        lot.frozen_nano,
                        lot.expires_at,
                        lot.opened_position,
                        lot.opened_at,
                        lot.expired_position,
                        lot.expired_nano,
                    )
                )
    return balances, lots


async def save_states(conn: Connection, rows: StateRows) -> None:
    """Write back the balance rows and changed lots taken by `state_rows`."""
    balances, lots = rows
    await conn.copy_records_to_table(
        "fold_stage_balances", records=balances, columns=BALANCE_COLUMNS
    )
    if lots:
        await conn.copy_records_to_table("fold_stage_lots", records=lots, columns=LOT_COLUMNS)
    await conn.execute(_SAVE_BALANCES)
    if lots:
        await conn.execute(_SAVE_LOTS)
    await conn.execute(_CLEAR_STAGES)


async def add_ledger_lines(conn: Connection, rows: list[tuple[object, ...]]) -> None:
    if rows:
        # COPY: the ledger gets one row per usage event, the fold's largest write.
        await conn.copy_records_to_table("ledger_entries", records=rows, columns=LEDGER_COLUMNS)


async def add_rollups(
    conn: Connection, rollups: dict[tuple[UUID, UUID, str, str, datetime], list[int]]
) -> None:
    if not rollups:
        return
    await conn.copy_records_to_table(
        "fold_stage_rollups",
        records=[(*key, *counters) for key, counters in rollups.items()],
        columns=(*ROLLUP_KEY, *ROLLUP_COUNTERS),
    )
    await conn.execute(_ADD_ROLLUPS)
    await conn.execute(_CLEAR_ROLLUPS)


async def add_consumption(
    conn: Connection, consumption: dict[tuple[UUID, date, str, str], int]
) -> None:
    if not consumption:
        return
    keys = list(consumption)
    await conn.execute(
        _ADD_CONSUMPTION,
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [k[3] for k in keys],
        list(consumption.values()),
    )


async def add_mismatches(conn: Connection, rows: list[MismatchRow]) -> None:
    if rows:
        await conn.execute(_ADD_MISMATCHES, *(list(column) for column in zip(*rows, strict=True)))


async def ensure_layout(conn: Connection, shard_count: int) -> int:
    """Record the shard count on first use; return the one the checkpoints were written with."""
    recorded: int | None = await conn.fetchval(_ENSURE_LAYOUT, shard_count)
    if recorded is None:
        # A concurrent first run inserted the row after this statement's snapshot was taken:
        # the INSERT waited for it and did nothing, the SELECT could not see it. A new
        # statement (a new snapshot) does.
        recorded = await conn.fetchval(_LAYOUT)
    assert recorded is not None
    return recorded


_LIST_MISMATCHES = """
SELECT position, tenant_id, request_id, model, price_version, reason, recorded_charge_nano,
       recomputed_charge_nano, recorded_base_nano, recomputed_base_nano, charged_nano,
       occurred_at
FROM pricing_mismatches
WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::bigint IS NULL OR position < $2)
ORDER BY position DESC LIMIT $3
"""
_LIST_DRIFT = """
SELECT id, tenant_id, kind, redis_seq, pg_seq, redis_balance_nano, pg_balance_nano,
       detail::text AS detail, repaired, detected_at
FROM live_balance_drift
WHERE ($1::uuid IS NULL OR tenant_id = $1) AND ($2::bigint IS NULL OR id < $2)
ORDER BY id DESC LIMIT $3
"""


async def list_mismatches(
    conn: Connection, tenant_id: UUID | None, before: int | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(_LIST_MISMATCHES, tenant_id, before, limit)


async def list_drift(
    conn: Connection, tenant_id: UUID | None, before: int | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(_LIST_DRIFT, tenant_id, before, limit)


async def shards_behind(conn: Connection, shard_count: int) -> list[int]:
    """Shards that have committed events not folded yet."""
    rows = await conn.fetch(_SHARDS_BEHIND, shard_count, FOLD_CONSUMER)
    return [r["index"] for r in rows]
