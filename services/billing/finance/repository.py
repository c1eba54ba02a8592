"""Every SQL statement of finance, and nothing else.

Figures come from one function each. Statements, invoices and exports read the billing fold's
projections (ledger, usage rollups, credit lots, consumption) and the documents finance issued;
the functions marked LOG SOURCE read the event log itself and serve only the reconciliation,
which checks the projections' figures against the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tally.db import Connection
from tally.eventlog import StoredEvent
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


# --- billing's projections: what statements are made of ----------------------------------
#
# Finance has no fold of its own: every statement figure is read from the billing fold's
# projections (usage_rollups, ledger_entries, credit_lots, credit_consumption_daily), so a figure
# counts exactly what the fold has applied. Periods are cut by the time each line carries:
# usage by its rollup hour (the usage event's occurred_at, UTC hour), money lines by the ledger's
# occurred_at (the log's recorded_at for money events). Finance months start on whole UTC hours
# (the settings refuse other zones), so no rollup hour straddles a period bound.

_ROLLUP_USAGE = """
SELECT tenant_id, model, provider,
       sum(requests) AS requests,
       sum(input_tokens) AS input_tokens,
       sum(cached_input_tokens) AS cached_input_tokens,
       sum(cache_write_tokens) AS cache_write_tokens,
       sum(output_tokens) AS output_tokens,
       sum(reasoning_tokens) AS reasoning_tokens,
       sum(images) AS images,
       sum(base_nano) AS base_nano,
       sum(charge_nano) AS charge_nano,
       sum(paid_nano) AS paid_nano,
       sum(promo_nano) AS promo_nano,
       sum(unfunded_nano) AS unfunded_nano
FROM usage_rollups
WHERE hour >= $1 AND hour < $2 AND ($3::uuid[] IS NULL OR tenant_id = ANY($3))
GROUP BY tenant_id, model, provider
ORDER BY tenant_id, model, provider
"""

_USAGE_FIELDS = (
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
    # How the fold funded the charges (from the rollups; 0 in the log reference).
    paid_nano: int = 0
    promo_nano: int = 0
    unfunded_nano: int = 0


async def usage_by_model(
    conn: Connection, start: datetime, end: datetime, tenant_ids: list[UUID] | None = None
) -> list[UsageAggregate]:
    """Usage of [start, end) by tenant, model and provider, from billing's hourly rollups.

    `start` and `end` must be whole UTC hours (finance period bounds are).
    """
    rows = await conn.fetch(_ROLLUP_USAGE, start, end, tenant_ids)
    return [
        UsageAggregate(
            tenant_id=row["tenant_id"],
            model=row["model"],
            provider=row["provider"],
            paid_nano=int(row["paid_nano"]),
            promo_nano=int(row["promo_nano"]),
            unfunded_nano=int(row["unfunded_nano"]),
            **{name: int(row[name]) for name in _USAGE_FIELDS},
        )
        for row in rows
    ]


_ROLLUP_USAGE_BEFORE = """
SELECT tenant_id, sum(charge_nano) AS charge_nano, sum(paid_nano) AS paid_nano,
       sum(promo_nano) AS promo_nano, sum(unfunded_nano) AS unfunded_nano
FROM usage_rollups
WHERE hour < $1 AND ($2::uuid[] IS NULL OR tenant_id = ANY($2))
GROUP BY tenant_id
"""


class UsageFunding(msgspec.Struct, frozen=True, kw_only=True):
    """Usage charges summed, and how they were funded."""

    charge_nano: int = 0
    paid_nano: int = 0
    promo_nano: int = 0
    unfunded_nano: int = 0


async def usage_funding_before(
    conn: Connection, before: datetime, tenant_ids: list[UUID] | None = None
) -> dict[UUID, UsageFunding]:
    """Per tenant: every usage charge of the hours before `before`, by funding."""
    rows = await conn.fetch(_ROLLUP_USAGE_BEFORE, before, tenant_ids)
    return {
        row["tenant_id"]: UsageFunding(
            charge_nano=int(row["charge_nano"]),
            paid_nano=int(row["paid_nano"]),
            promo_nano=int(row["promo_nano"]),
            unfunded_nano=int(row["unfunded_nano"]),
        )
        for row in rows
    }


# Money lines: every non-usage ledger line (served by ledger_entries_money_idx), plus the
# expiries that removed nothing (the ledger only holds balance changes, but a statement says
# that a grant expired). The zero expiries are the lots billing marked expired with nothing
# left; their time is the expiry event's, looked up by its position.
_MONEY_LINES = """
SELECT tenant_id, position, kind, amount_nano, occurred_at, reference, description, unfunded_nano
FROM ledger_entries
WHERE kind <> 'usage' AND occurred_at >= $1 AND occurred_at < $2
  AND ($3::uuid[] IS NULL OR tenant_id = ANY($3))
UNION ALL
SELECT l.tenant_id, l.expired_position, 'expiry', 0, e.recorded_at, l.reference,
       'Expired: no unused credits left of the grant', 0
FROM credit_lots l JOIN events e ON e.position = l.expired_position
WHERE l.expired_position IS NOT NULL AND l.expired_nano = 0
  AND e.recorded_at >= $1 AND e.recorded_at < $2
  AND ($3::uuid[] IS NULL OR l.tenant_id = ANY($3))
ORDER BY tenant_id, occurred_at, position
"""


class LedgerMoneyLine(msgspec.Struct, frozen=True, kw_only=True):
    """A ledger line that is not usage: the balance change of one money event."""

    tenant_id: UUID
    position: int
    kind: str
    amount_nano: int
    occurred_at: datetime
    reference: str
    description: str
    unfunded_nano: int = 0


async def money_lines(
    conn: Connection, start: datetime, end: datetime, tenant_ids: list[UUID] | None = None
) -> list[LedgerMoneyLine]:
    """The ledger's money lines of [start, end), per tenant in time order."""
    rows = await conn.fetch(_MONEY_LINES, start, end, tenant_ids)
    return [LedgerMoneyLine(**dict(row)) for row in rows]


_MONEY_BEFORE = """
SELECT tenant_id, sum(amount_nano) AS amount_nano, sum(unfunded_nano) AS unfunded_nano
FROM ledger_entries
WHERE kind <> 'usage' AND occurred_at < $1 AND ($2::uuid[] IS NULL OR tenant_id = ANY($2))
GROUP BY tenant_id
"""


async def money_before(
    conn: Connection, before: datetime, tenant_ids: list[UUID] | None = None
) -> dict[UUID, tuple[int, int]]:
    """Per tenant: (Σ balance change, Σ unfunded debit) of the money lines before `before`."""
    rows = await conn.fetch(_MONEY_BEFORE, before, tenant_ids)
    return {r["tenant_id"]: (int(r["amount_nano"]), int(r["unfunded_nano"])) for r in rows}


_LOTS_OPENED = """
SELECT tenant_id, funding,
       coalesce(sum(amount_nano) FILTER (WHERE opened_at < $1), 0) AS before,
       coalesce(sum(amount_nano) FILTER (WHERE opened_at >= $1), 0) AS during
FROM credit_lots
WHERE opened_at < $2 AND ($3::uuid[] IS NULL OR tenant_id = ANY($3))
GROUP BY tenant_id, funding
"""


async def lots_opened(
    conn: Connection, start: datetime, end: datetime, tenant_ids: list[UUID] | None = None
) -> dict[tuple[UUID, str], tuple[int, int]]:
    """Per (tenant, funding): credits put into lots before `start` and during [start, end)."""
    rows = await conn.fetch(_LOTS_OPENED, start, end, tenant_ids)
    return {(r["tenant_id"], r["funding"]): (int(r["before"]), int(r["during"])) for r in rows}


# Credits that left lots other than by usage paid at once, per UTC day. Every such movement is
# caused by a money event, so a day's row is placed at the first money line of that tenant and
# day (exact unless one UTC day holds money lines of two periods: then the whole day counts in
# the earlier one), or at the day's start when it has none (a dispute lost, which changes no
# balance).
_CONSUMPTION = """
SELECT c.tenant_id, c.funding, c.reason, c.amount_nano,
       coalesce(
           (SELECT min(l.occurred_at) FROM ledger_entries l
            WHERE l.tenant_id = c.tenant_id AND l.kind <> 'usage'
              AND l.occurred_at >= c.day::timestamp AT TIME ZONE 'UTC'
              AND l.occurred_at < (c.day + 1)::timestamp AT TIME ZONE 'UTC'),
           c.day::timestamp AT TIME ZONE 'UTC') AS at
FROM credit_consumption_daily c
WHERE c.day <= $1::date AND ($2::uuid[] IS NULL OR c.tenant_id = ANY($2))
"""


class Consumption(msgspec.Struct, frozen=True, kw_only=True):
    tenant_id: UUID
    funding: str
    reason: str
    amount_nano: int
    at: datetime


async def consumption_through(
    conn: Connection, end: datetime, tenant_ids: list[UUID] | None = None
) -> list[Consumption]:
    """Every consumption row of the UTC days up to `end`'s, each placed at an instant."""
    rows = await conn.fetch(_CONSUMPTION, end.astimezone(UTC).date(), tenant_ids)
    return [Consumption(**dict(row)) for row in rows]


_BALANCES = """
SELECT tenant_id, balance_nano FROM balances WHERE ($1::uuid IS NULL OR tenant_id = $1)
"""


async def folded_balances(conn: Connection, tenant_id: UUID | None = None) -> dict[UUID, int]:
    """The billing fold's running balance of each tenant (the last ledger line's balance)."""
    rows = await conn.fetch(_BALANCES, tenant_id)
    return {r["tenant_id"]: int(r["balance_nano"]) for r in rows}


# Events the billing fold has not applied yet that belong before `end`: recorded before the
# cut, or usage that occurred before the period ended. Each shard's checkpoint is compared with
# the events of its shard (the fold's own hash); a shard never checkpointed has applied nothing.
_FOLD_SHARDS = """
SELECT s.index, coalesce(c.txid, '0'::xid8)::text AS txid, coalesce(c.position, 0) AS position
FROM (SELECT coalesce((SELECT shard_count FROM fold_layout), 1) AS n) AS layout
CROSS JOIN generate_series(0, layout.n - 1) AS s(index)
LEFT JOIN consumer_checkpoints c ON c.consumer = $1 || ':' || s.index || '/' || layout.n
"""
# Read from the lowest shard checkpoint on (the txid index), then per event its own shard's.
_UNFOLDED_BEFORE = """
SELECT count(*) FROM events e
JOIN unnest($4::int[], $5::text[], $6::bigint[]) AS c(index, txid, position)
  ON c.index = mod(hashtextextended(e.tenant_id::text, 0) & 9223372036854775807,
                   cardinality($4::int[]))
WHERE (e.txid, e.position) > ($1::text::xid8, $2)
  AND (e.txid, e.position) > (c.txid::xid8, c.position)
  AND e.tenant_id IS NOT NULL
  AND (e.recorded_at < $3
       OR (e.type = 'UsageRecorded' AND (e.data->>'occurred_at')::timestamptz < $7))
"""
FOLD_CONSUMER = "billing.fold"


async def unfolded_count(conn: Connection, cut: datetime, period_end: datetime) -> int:
    """Events the billing fold has not applied that a period ending at `period_end` needs:
    recorded before `cut`, or usage that occurred before the period ended. Each event is
    compared with its own shard's checkpoint (the fold's hash of the tenant id)."""
    shards = sorted(await conn.fetch(_FOLD_SHARDS, FOLD_CONSUMER), key=lambda r: r["index"])
    low = min(shards, key=lambda r: (int(r["txid"]), r["position"]))
    count: int = await conn.fetchval(
        _UNFOLDED_BEFORE,
        low["txid"],
        low["position"],
        cut,
        [r["index"] for r in shards],
        [r["txid"] for r in shards],
        [r["position"] for r in shards],
        period_end,
    )
    return count


# --- the log: the reconciliation's reference (LOG SOURCE) ----------------------------------

# Usage by tenant, model and provider, bucketed like the rollups (by occurred_at).
# json_to_record parses each payload once (each ->> on a json column would parse it again).
# The recorded_at window only prunes: usage is recorded after it occurs, within the close grace.
_LOG_USAGE_BY_MODEL = """
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
    AS u(model text, provider text, base_nano bigint, charge_nano bigint, usage json,
         occurred_at timestamptz)
CROSS JOIN LATERAL json_to_record(u.usage)
    AS t(input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint,
         output_tokens bigint, reasoning_tokens bigint, images json)
WHERE e.type = 'UsageRecorded' AND e.recorded_at >= $1
  AND u.occurred_at >= $1 AND u.occurred_at < $2
  AND e.tenant_id IS NOT NULL
  AND ($3::uuid IS NULL OR e.tenant_id = $3)
GROUP BY e.tenant_id, u.model, coalesce(u.provider, '')
ORDER BY e.tenant_id, u.model, provider
"""


async def log_usage_by_model(
    conn: Connection, start: datetime, end: datetime, tenant_id: UUID | None = None
) -> list[UsageAggregate]:
    """LOG SOURCE, for the reconciliation only: usage that occurred in [start, end), parsed
    from every usage event's JSON. Statements never read this."""
    rows = await conn.fetch(_LOG_USAGE_BY_MODEL, start, end, tenant_id)
    return [
        UsageAggregate(
            tenant_id=row["tenant_id"],
            model=row["model"],
            provider=row["provider"],
            **{name: int(row[name]) for name in _USAGE_FIELDS},
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
_CLOSING_BALANCES = """
SELECT tenant_id, closing_balance_nano FROM finance_statements
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


async def closing_balances(
    conn: Connection, period: str, tenant_id: UUID | None = None
) -> dict[UUID, int]:
    """Each tenant's stored closing balance of a closed period."""
    rows = await conn.fetch(_CLOSING_BALANCES, period, tenant_id)
    return {row["tenant_id"]: int(row["closing_balance_nano"]) for row in rows}
