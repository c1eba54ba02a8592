"""The audit log's reads of the event log (the usage stream is not part of it)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from tally.db import Connection

# Newest first. The usage stream is excluded, which is also the predicate of the partial
# indexes events_audit_idx / events_audit_tenant_idx that serve these scans (migration 0101).
# Two statements rather than one with "$1 IS NULL OR tenant_id = $1": a prepared statement's
# generic plan could not use the tenant index for that.
LIST_EVENTS = """
SELECT position, type, tenant_id, recorded_at, data::text AS data
FROM events
WHERE type <> 'UsageRecorded'
  AND ($1::text[] IS NULL OR type = ANY($1))
  AND ($2::text IS NULL OR data->'actor'->>'id' = $2)
  AND ($3::text IS NULL OR data->'actor'->>'kind' = $3)
  AND ($4::timestamptz IS NULL OR recorded_at >= $4)
  AND ($5::timestamptz IS NULL OR recorded_at < $5)
  AND ($6::bigint IS NULL OR position < $6)
ORDER BY position DESC
LIMIT $7
"""
LIST_TENANT_EVENTS = """
SELECT position, type, tenant_id, recorded_at, data::text AS data
FROM events
WHERE type <> 'UsageRecorded' AND tenant_id = $8
  AND ($1::text[] IS NULL OR type = ANY($1))
  AND ($2::text IS NULL OR data->'actor'->>'id' = $2)
  AND ($3::text IS NULL OR data->'actor'->>'kind' = $3)
  AND ($4::timestamptz IS NULL OR recorded_at >= $4)
  AND ($5::timestamptz IS NULL OR recorded_at < $5)
  AND ($6::bigint IS NULL OR position < $6)
ORDER BY position DESC
LIMIT $7
"""


async def list_events(
    conn: Connection,
    *,
    tenant_id: UUID | None,
    types: list[str] | None,
    actor_id: str | None,
    actor_kind: str | None,
    since: datetime | None,
    until: datetime | None,
    before_position: int | None,
    limit: int,
) -> list[asyncpg.Record]:
    args = (types, actor_id, actor_kind, since, until, before_position, limit)
    if tenant_id is None:
        return await conn.fetch(LIST_EVENTS, *args)
    return await conn.fetch(LIST_TENANT_EVENTS, *args, tenant_id)
