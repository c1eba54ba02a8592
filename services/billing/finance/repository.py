"""Every SQL statement of finance, and nothing else.

Figures come from one function each, so a figure's source can change without touching the
logic. Today every money figure is read from the event log itself (the ground truth); the
functions marked LOG SOURCE are the ones to point at the billing fold's projections (ledger,
usage rollups, credit lots) once those exist, keeping these as the reconciliation's reference.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from billing.finance.fold import MONEY_EVENT_TYPES, LotState, MoneyEvent, UsageSegment
from tally.db import Connection
from tally.eventlog import StoredEvent, decode_event
from tally.eventlog.reader import Checkpoint, load_checkpoint, save_checkpoint
from tally.eventlog.store import stored_from_row

DOCUMENTS_CONSUMER = "finance.documents"

# --- tenants -------------------------------------------------------------------------------

_TENANT_BY_ID = """
SELECT id, name, billing_email, tax_id, address, country, mode, created_at
FROM tenants WHERE id = $1
"""
_TENANT_BY_NAME = """
SELECT id, name, billing_email, tax_id, address, country, mode, created_at
FROM tenants WHERE lower(name) = lower($1)
"""
# Every tenant that existed before the period ended gets a statement, active or not.
_TENANTS_BEFORE = """
SELECT id, name, billing_email, tax_id, address, country, mode, created_at
FROM tenants WHERE created_at < $1 ORDER BY id
"""


class TenantRow(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's billing details, as the tenant service keeps them."""

    id: UUID
    name: str
    billing_email: str | None
    tax_id: str | None
    address: Any
    country: str | None
    mode: str
    created_at: datetime


def _tenant(row: asyncpg.Record) -> TenantRow:
    return TenantRow(**dict(row))


async def tenant_by_id(conn: Connection, tenant_id: UUID) -> TenantRow | None:
    row = await conn.fetchrow(_TENANT_BY_ID, tenant_id)
    return _tenant(row) if row else None


async def tenant_by_name(conn: Connection, name: str) -> TenantRow | None:
    row = await conn.fetchrow(_TENANT_BY_NAME, name)
    return _tenant(row) if row else None


async def tenants_created_before(conn: Connection, end: datetime) -> list[TenantRow]:
    return [_tenant(row) for row in await conn.fetch(_TENANTS_BEFORE, end)]


# --- the log: money events and usage (LOG SOURCE) ------------------------------------------

# A tenant's money events of [start, end) in fold order, with the usage between two money
# events summed into one segment. Fold order is (month in the finance time zone, txid,
# position): the log's own order within a month, and months never interleave, so folding month
# by month from a closed statement gives exactly what one fold over the whole range gives.
# Segment n holds the usage after the n-th money event (0: before the first).
_FOLD_ITEMS = """
WITH period_events AS (
    SELECT tenant_id, txid, position,
           date_trunc('month', recorded_at AT TIME ZONE $3) AS month,
           type <> 'UsageRecorded' AS is_money,
           CASE WHEN type <> 'UsageRecorded' THEN type END AS type,
           CASE WHEN type <> 'UsageRecorded' THEN schema_version END AS schema_version,
           CASE WHEN type <> 'UsageRecorded' THEN data::text END AS data,
           recorded_at,
           CASE WHEN type = 'UsageRecorded' THEN (data->>'charge_nano')::bigint END AS charge
    FROM events
    WHERE recorded_at >= $1 AND recorded_at < $2
      AND tenant_id IS NOT NULL
      AND type = ANY($4::text[])
      AND ($5::uuid IS NULL OR tenant_id = $5)
), numbered AS (
    SELECT *, count(*) FILTER (WHERE is_money) OVER (
        PARTITION BY tenant_id ORDER BY month, txid, position) AS segment
    FROM period_events
)
SELECT tenant_id, segment, 0 AS part, type, schema_version, data, recorded_at,
       NULL::numeric AS charge
FROM numbered WHERE is_money
UNION ALL
SELECT tenant_id, segment, 1, NULL, NULL, NULL, NULL, sum(charge)
FROM numbered WHERE NOT is_money
GROUP BY tenant_id, segment
ORDER BY tenant_id, segment, part
"""

_FOLD_TYPES = [*MONEY_EVENT_TYPES, "UsageRecorded"]


async def fold_items(
    conn: Connection,
    start: datetime,
    end: datetime,
    timezone: str,
    tenant_id: UUID | None = None,
) -> dict[UUID, list[MoneyEvent | UsageSegment]]:
    """LOG SOURCE. Per tenant, the money events and usage segments of [start, end) in order."""
    items: dict[UUID, list[MoneyEvent | UsageSegment]] = {}
    rows = await conn.fetch(_FOLD_ITEMS, start, end, timezone, _FOLD_TYPES, tenant_id)
    for row in rows:
        bucket = items.setdefault(row["tenant_id"], [])
        if row["part"] == 0:
            event = decode_event(row["type"], row["schema_version"], row["data"])
            bucket.append(MoneyEvent(event, row["recorded_at"]))
        else:
            bucket.append(UsageSegment(int(row["charge"])))
    return items


# Usage by tenant, model and provider. json_to_record parses each payload once (each ->>
# on a json column would parse it again).
_USAGE_BY_MODEL = """
SELECT e.tenant_id, u.model, coalesce(u.provider, '') AS provider,
       count(*) AS requests,
       coalesce(sum(t.input_tokens), 0) AS input_tokens,
       coalesce(sum(t.cached_input_tokens), 0) AS cached_input_tokens,
       coalesce(sum(t.cache_write_tokens), 0) AS cache_write_tokens,
       coalesce(sum(t.output_tokens), 0) AS output_tokens,
       coalesce(sum(t.reasoning_tokens), 0) AS reasoning_tokens,
       coalesce(sum(CASE WHEN t.images IS NULL THEN 0 ELSE
           (SELECT sum(value::text::bigint) FROM json_each(t.images)) END), 0) AS images,
       coalesce(sum(u.base_nano), 0) AS base_nano,
       coalesce(sum(u.charge_nano), 0) AS charge_nano
FROM events e
CROSS JOIN LATERAL json_to_record(e.data)
    AS u(model text, provider text, base_nano bigint, charge_nano bigint, usage json)
CROSS JOIN LATERAL json_to_record(u.usage)
    AS t(input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint,
         output_tokens bigint, reasoning_tokens bigint, images json)
WHERE e.type = 'UsageRecorded' AND e.recorded_at >= $1 AND e.recorded_at < $2
  AND e.tenant_id IS NOT NULL
  AND ($3::uuid IS NULL OR e.tenant_id = $3)
GROUP BY e.tenant_id, u.model, coalesce(u.provider, '')
ORDER BY e.tenant_id, u.model, provider
"""


class UsageAggregate(msgspec.Struct, frozen=True, kw_only=True):
    """A tenant's usage of one model through one provider over a time range."""

    tenant_id: UUID
    model: str
    provider: str
    requests: int
    input_tokens: int
    cached_input_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    images: int
    base_nano: int
    charge_nano: int


async def usage_by_model(
    conn: Connection, start: datetime, end: datetime, tenant_id: UUID | None = None
) -> list[UsageAggregate]:
    """LOG SOURCE. Usage of [start, end) by tenant, model and provider.

    After the merge: the same figures from billing's hourly rollups (tenant x key x model x
    hour) summed over the period's hours.
    """
    rows = await conn.fetch(_USAGE_BY_MODEL, start, end, tenant_id)
    return [
        UsageAggregate(
            tenant_id=row["tenant_id"],
            model=row["model"],
            provider=row["provider"],
            **{
                name: int(row[name])
                for name in (
                    "requests",
                    "input_tokens",
                    "cached_input_tokens",
                    "cache_write_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                    "images",
                    "base_nano",
                    "charge_nano",
                )
            },
        )
        for row in rows
    ]


_FIRST_EVENT_AT = "SELECT recorded_at FROM events ORDER BY position LIMIT 1"


async def first_event_at(conn: Connection) -> datetime | None:
    """When the log began (the first period that can need closing)."""
    at: datetime | None = await conn.fetchval(_FIRST_EVENT_AT)
    return at


# --- documents -----------------------------------------------------------------------------

# Gap-safe, like tally.eventlog's reader, but only the two event types documents are issued
# for: the other rows are skipped inside Postgres instead of being sent and decoded here.
_READ_DOCUMENT_EVENTS = """
SELECT position, txid::text::bigint AS txid, type, schema_version, tenant_id, idempotency_key,
       data::text AS data, recorded_at
FROM events
WHERE (txid, position) > ($1::text::xid8, $2)
  AND txid < pg_snapshot_xmin(pg_current_snapshot())
  AND type IN ('CreditsPurchased', 'CreditsRefunded')
ORDER BY events.txid, events.position
LIMIT $3
"""
_LOCK_CONSUMER = "SELECT pg_advisory_xact_lock(hashtextextended('consumer:' || $1, 0))"
# Issuing takes this lock shared and closing a period takes it exclusive, so no document can
# land in a period while it is being closed.
_LOCK_PERIODS_SHARED = "SELECT pg_advisory_xact_lock_shared(hashtextextended('finance:periods', 0))"
_LOCK_PERIODS_SESSION = "SELECT pg_advisory_lock(hashtextextended('finance:periods', 0))"
_UNLOCK_PERIODS_SESSION = "SELECT pg_advisory_unlock(hashtextextended('finance:periods', 0))"


async def lock_document_consumer(conn: Connection) -> Checkpoint:
    """Serialise issuers (one runs at a time) and return where the last one stopped."""
    await conn.execute(_LOCK_CONSUMER, DOCUMENTS_CONSUMER)
    await conn.execute(_LOCK_PERIODS_SHARED)
    return await load_checkpoint(conn, DOCUMENTS_CONSUMER)


async def read_document_events(
    conn: Connection, after: Checkpoint, limit: int
) -> list[StoredEvent]:
    rows = await conn.fetch(_READ_DOCUMENT_EVENTS, str(after.txid), after.position, limit)
    return [stored_from_row(row) for row in rows]


async def save_document_checkpoint(conn: Connection, at: Checkpoint) -> None:
    await save_checkpoint(conn, DOCUMENTS_CONSUMER, at)


async def lock_periods_session(conn: Connection) -> None:
    """Exclusive, held by the connection until `unlock_periods_session` (taken before a
    repeatable-read transaction, whose snapshot must not predate the lock)."""
    await conn.execute(_LOCK_PERIODS_SESSION)


async def unlock_periods_session(conn: Connection) -> None:
    await conn.execute(_UNLOCK_PERIODS_SESSION)


# The counter row is created on first use, then advanced under its row lock, which is held until
# the issuing transaction ends: concurrent issuers queue here, and a rollback returns the number.
_ENSURE_COUNTER = """
INSERT INTO finance_number_counters (issuer, series) VALUES ($1, $2)
ON CONFLICT (issuer, series) DO NOTHING
"""
_TAKE_NUMBER = """
UPDATE finance_number_counters SET next_number = next_number + 1
WHERE issuer = $1 AND series = $2
RETURNING next_number - 1
"""


async def take_document_number(conn: Connection, issuer: str, series: str) -> int:
    """The next number of (issuer, series), gap-free: call inside the issuing transaction."""
    await conn.execute(_ENSURE_COUNTER, issuer, series)
    number: int = await conn.fetchval(_TAKE_NUMBER, issuer, series)
    return number


_INSERT_DOCUMENT = """
INSERT INTO finance_documents (id, kind, issuer, series, number, document_number, tenant_id,
    source_id, source_position, references_id, period, issue_date, supply_date, currency,
    net_minor, tax_minor, gross_minor, body)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
        $18::text::jsonb)
"""


class DocumentRow(msgspec.Struct, frozen=True, kw_only=True):
    id: UUID
    kind: str
    issuer: str
    series: str
    number: int
    document_number: str
    tenant_id: UUID
    source_id: str
    source_position: int
    references_id: UUID | None
    period: str
    issue_date: date
    supply_date: date
    currency: str
    net_minor: int
    tax_minor: int
    gross_minor: int
    body: bytes


async def insert_document(conn: Connection, row: DocumentRow) -> None:
    await conn.execute(
        _INSERT_DOCUMENT,
        row.id,
        row.kind,
        row.issuer,
        row.series,
        row.number,
        row.document_number,
        row.tenant_id,
        row.source_id,
        row.source_position,
        row.references_id,
        row.period,
        row.issue_date,
        row.supply_date,
        row.currency,
        row.net_minor,
        row.tax_minor,
        row.gross_minor,
        row.body.decode(),
    )


_DOCUMENT_EXISTS = "SELECT id FROM finance_documents WHERE kind = $1 AND source_id = $2"
_INVOICE_OF_PURCHASE = """
SELECT id, document_number, issue_date, currency, body::text AS body FROM finance_documents
WHERE kind = 'invoice' AND tenant_id = $1 AND source_id = $2
"""
_CREDITED_SO_FAR = """
SELECT coalesce(sum(net_minor), 0) AS net, coalesce(sum(gross_minor), 0) AS gross
FROM finance_documents WHERE kind = 'credit_note' AND references_id = $1
"""


async def document_exists(conn: Connection, kind: str, source_id: str) -> bool:
    return await conn.fetchval(_DOCUMENT_EXISTS, kind, source_id) is not None


async def invoice_of_purchase(
    conn: Connection, tenant_id: UUID, purchase_id: str
) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(_INVOICE_OF_PURCHASE, tenant_id, purchase_id)
    return row


async def credited_so_far(conn: Connection, invoice_id: UUID) -> tuple[int, int]:
    """(net, gross) of the credit notes already issued against an invoice (negative)."""
    row = await conn.fetchrow(_CREDITED_SO_FAR, invoice_id)
    assert row is not None  # an aggregate always returns one row
    return int(row["net"]), int(row["gross"])


_DOCUMENTS_OF_PERIOD = """
SELECT body::text AS body FROM finance_documents
WHERE period = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
ORDER BY series DESC, number
"""
_DOCUMENT_BY_ID = "SELECT tenant_id, body::text AS body FROM finance_documents WHERE id = $1"
_DOCUMENT_TOTALS = """
SELECT currency, count(*) FILTER (WHERE kind = 'invoice') AS invoices,
       count(*) FILTER (WHERE kind = 'credit_note') AS credit_notes,
       sum(net_minor) AS net, sum(tax_minor) AS tax, sum(gross_minor) AS gross
FROM finance_documents WHERE period = $1 GROUP BY currency ORDER BY currency
"""
_DOCUMENT_SOURCES = """
SELECT kind, source_id, tenant_id, gross_minor, currency, references_id
FROM finance_documents WHERE source_position = ANY($1::bigint[])
"""


async def stream_document_bodies(
    conn: Connection, period: str, tenant_id: UUID | None, *, prefetch: int = 500
) -> AsyncIterator[bytes]:
    """The period's documents (invoices first, then credit notes, by number), streamed."""
    async for row in conn.cursor(_DOCUMENTS_OF_PERIOD, period, tenant_id, prefetch=prefetch):
        yield row["body"].encode()


async def document_body(conn: Connection, document_id: UUID) -> tuple[UUID, bytes] | None:
    row = await conn.fetchrow(_DOCUMENT_BY_ID, document_id)
    return (row["tenant_id"], row["body"].encode()) if row else None


async def document_totals(conn: Connection, period: str) -> list[asyncpg.Record]:
    return list(await conn.fetch(_DOCUMENT_TOTALS, period))


_DOCUMENT_EVENTS_OF_RANGE = """
SELECT position, type, tenant_id, data::text AS data
FROM events
WHERE type IN ('CreditsPurchased', 'CreditsRefunded')
  AND recorded_at >= $1 AND recorded_at < $2 AND tenant_id IS NOT NULL
ORDER BY position
"""


async def document_events_of_range(
    conn: Connection, start: datetime, end: datetime
) -> list[asyncpg.Record]:
    """The purchases and refunds the log recorded in [start, end): each needs its document."""
    return list(await conn.fetch(_DOCUMENT_EVENTS_OF_RANGE, start, end))


_UNDOCUMENTED_COUNT = """
SELECT count(*) FROM events e
WHERE e.type IN ('CreditsPurchased', 'CreditsRefunded')
  AND e.recorded_at >= $1 AND e.recorded_at < $2 AND e.tenant_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM finance_documents d WHERE d.source_position = e.position)
"""


async def undocumented_count(conn: Connection, start: datetime, end: datetime) -> int:
    """Purchases and refunds recorded in [start, end) that have no document yet."""
    count: int = await conn.fetchval(_UNDOCUMENTED_COUNT, start, end)
    return count


async def documents_for_positions(conn: Connection, positions: list[int]) -> list[asyncpg.Record]:
    return list(await conn.fetch(_DOCUMENT_SOURCES, positions))


# --- periods and statements ----------------------------------------------------------------

_PERIOD = """
SELECT period, timezone, starts_at, ends_at, statements, closed_at
FROM finance_periods WHERE period = $1
"""
_PERIODS = """
SELECT period, timezone, starts_at, ends_at, statements, closed_at
FROM finance_periods ORDER BY period
"""
_INSERT_PERIOD = """
INSERT INTO finance_periods (period, timezone, starts_at, ends_at, statements)
VALUES ($1, $2, $3, $4, $5)
"""
_INSERT_STATEMENTS = """
INSERT INTO finance_statements (tenant_id, period, opening_balance_nano, closing_balance_nano,
                                body, closing_state)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::text[]::jsonb[],
                     $6::text[]::jsonb[])
"""
_STATEMENT = """
SELECT body::text AS body FROM finance_statements WHERE tenant_id = $1 AND period = $2
"""
_STATEMENTS_OF_PERIOD = """
SELECT body::text AS body FROM finance_statements WHERE period = $1 ORDER BY tenant_id
"""
_CLOSING_STATES = """
SELECT tenant_id, closing_state::text AS state FROM finance_statements
WHERE period = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
"""


async def period_row(conn: Connection, period: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(_PERIOD, period)
    return row


async def period_rows(conn: Connection) -> list[asyncpg.Record]:
    return list(await conn.fetch(_PERIODS))


async def insert_period(
    conn: Connection, period: str, timezone: str, start: datetime, end: datetime, statements: int
) -> None:
    await conn.execute(_INSERT_PERIOD, period, timezone, start, end, statements)


class StatementRow(msgspec.Struct, frozen=True):
    tenant_id: UUID
    opening_balance_nano: int
    closing_balance_nano: int
    body: bytes
    closing_state: bytes


async def insert_statements(conn: Connection, period: str, rows: list[StatementRow]) -> None:
    await conn.execute(
        _INSERT_STATEMENTS,
        [row.tenant_id for row in rows],
        [period] * len(rows),
        [row.opening_balance_nano for row in rows],
        [row.closing_balance_nano for row in rows],
        [row.body.decode() for row in rows],
        [row.closing_state.decode() for row in rows],
    )


async def statement_body(conn: Connection, tenant_id: UUID, period: str) -> bytes | None:
    body: str | None = await conn.fetchval(_STATEMENT, tenant_id, period)
    return body.encode() if body is not None else None


async def stream_statement_bodies(
    conn: Connection, period: str, *, prefetch: int = 200
) -> AsyncIterator[bytes]:
    async for row in conn.cursor(_STATEMENTS_OF_PERIOD, period, prefetch=prefetch):
        yield row["body"].encode()


_state_decoder = msgspec.json.Decoder(LotState)


async def closing_states(
    conn: Connection, period: str, tenant_id: UUID | None = None
) -> dict[UUID, LotState]:
    """The credit lots of each tenant at the end of a closed period."""
    rows = await conn.fetch(_CLOSING_STATES, period, tenant_id)
    return {row["tenant_id"]: _state_decoder.decode(row["state"]) for row in rows}
