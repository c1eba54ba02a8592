"""Appending events inside a caller's transaction, idempotently."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from tally.db import Connection
from tally.eventlog.base import Event, decode_event, encode_event


class NewEvent(msgspec.Struct, frozen=True):
    """An event to append, with the key that makes its append idempotent."""

    event: Event
    idempotency_key: str


class StoredEvent(msgspec.Struct, frozen=True):
    """An event as the log holds it. `duplicate` is True when the append found it already there."""

    position: int
    txid: int
    type: str
    schema_version: int
    tenant_id: UUID | None
    idempotency_key: str
    event: Event
    recorded_at: datetime
    duplicate: bool = False


# Listeners (`EventNotifier`) hear of every commit that appended events on this channel.
NOTIFY_CHANNEL = "tally_events"
NOTIFY = f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')"

# One round trip for the whole batch: unnest the columns, insert in order, skip keys already
# present. The uncorrelated pg_notify is an InitPlan, run once per statement that inserts.
_INSERT_NOTIFY = f"""
INSERT INTO events (type, schema_version, tenant_id, idempotency_key, data)
SELECT t.type, t.schema_version, t.tenant_id, t.idempotency_key, t.data::json
FROM unnest($1::text[], $2::smallint[], $3::uuid[], $4::text[], $5::text[])
     WITH ORDINALITY AS t(type, schema_version, tenant_id, idempotency_key, data, ord)
ORDER BY t.ord
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING position, txid::text::bigint AS txid, idempotency_key, recorded_at,
          ({NOTIFY}) IS NULL AS notified
"""  # noqa: S608 - built from constants only
_INSERT_QUIET = _INSERT_NOTIFY.replace(f"({NOTIFY}) IS NULL", "true")

# Runs as a statement of its own so that, under READ COMMITTED, it sees a duplicate committed by
# a concurrent transaction that the INSERT waited for.
_SELECT_EXISTING = """
SELECT position, txid::text::bigint AS txid, type, schema_version, tenant_id, idempotency_key,
       data::text AS data, recorded_at
FROM events WHERE idempotency_key = ANY($1::text[])
"""


async def append_events(
    conn: Connection, batch: Sequence[NewEvent], *, notify: bool = True
) -> list[StoredEvent]:
    """Append `batch` in the caller's transaction; results are in input order.

    An event whose idempotency key is already in the log is not appended again: its result is
    the original event, marked `duplicate`. Visible to readers once the caller commits, which
    also wakes the log's listeners (`EventNotifier`) unless `notify` is false: the caller
    then owes them a notification of its own (`NOTIFY`).
    """
    if not batch:
        return []
    encoded = [encode_event(item.event) for item in batch]
    rows = await conn.fetch(
        _INSERT_NOTIFY if notify else _INSERT_QUIET,
        [type(item.event).__name__ for item in batch],
        [item.event.schema_version for item in batch],
        [item.event.event_tenant_id for item in batch],
        [item.idempotency_key for item in batch],
        [data.decode() for data in encoded],
    )
    inserted = {row["idempotency_key"]: row for row in rows}
    existing: dict[str, StoredEvent] = {}
    missing = [item.idempotency_key for item in batch if item.idempotency_key not in inserted]
    if missing:
        for row in await conn.fetch(_SELECT_EXISTING, missing):
            existing[row["idempotency_key"]] = stored_from_row(row, duplicate=True)
    results: list[StoredEvent] = []
    for item in batch:
        key = item.idempotency_key
        fresh = inserted.get(key)
        if fresh is None:
            results.append(existing[key])
            continue
        row = fresh
        results.append(
            StoredEvent(
                position=row["position"],
                txid=row["txid"],
                type=type(item.event).__name__,
                schema_version=item.event.schema_version,
                tenant_id=item.event.event_tenant_id,
                idempotency_key=key,
                event=item.event,
                recorded_at=row["recorded_at"],
            )
        )
        # A key repeated inside one batch is appended once; later copies are its duplicates.
        inserted.pop(key)
        existing[key] = msgspec.structs.replace(results[-1], duplicate=True)
    return results


def stored_from_row(row: asyncpg.Record, *, duplicate: bool = False) -> StoredEvent:
    # Positional unpacking: the fold reads millions of rows, and name lookups cost twice as much.
    # Column order is that of _SELECT_EXISTING and the reader's query.
    position, txid, type_name, schema_version, tenant_id, key, data, recorded_at = row
    return StoredEvent(
        position,
        txid,
        type_name,
        schema_version,
        tenant_id,
        key,
        decode_event(type_name, schema_version, data),
        recorded_at,
        duplicate,
    )
