"""SQL of low-balance alerts and their notifications. Every statement takes the tenant id."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from tally.db import Connection

_UPSERT_ALERT = """
INSERT INTO low_balance_alerts (tenant_id, threshold_nano, url, secret_key_id, secret_ciphertext,
                                armed)
VALUES ($1, $2, $3, $4, $5, true)
ON CONFLICT (tenant_id) DO UPDATE SET
    threshold_nano = EXCLUDED.threshold_nano, url = EXCLUDED.url,
    secret_key_id = EXCLUDED.secret_key_id, secret_ciphertext = EXCLUDED.secret_ciphertext,
    armed = true, updated_at = now()
RETURNING tenant_id, threshold_nano, url, armed, created_at, updated_at
"""
_UPDATE_ALERT_KEEPING_KEY = """
UPDATE low_balance_alerts SET threshold_nano = $2, url = $3, armed = true, updated_at = now()
WHERE tenant_id = $1
RETURNING tenant_id, threshold_nano, url, armed, created_at, updated_at
"""
_GET_ALERT = """
SELECT tenant_id, threshold_nano, url, armed, created_at, updated_at
FROM low_balance_alerts WHERE tenant_id = $1
"""
_DELETE_ALERT = "DELETE FROM low_balance_alerts WHERE tenant_id = $1"
_ALERTS_FOR = """
SELECT tenant_id, threshold_nano, url, armed FROM low_balance_alerts
WHERE tenant_id = ANY($1::uuid[])
"""
_INSERT_NOTIFICATIONS = """
INSERT INTO notifications (id, tenant_id, kind, position, url, payload)
SELECT t.id, t.tenant_id, 'low_balance', t.position, t.url, t.payload::jsonb
FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::text[], $5::text[])
     AS t(id, tenant_id, position, url, payload)
ON CONFLICT (tenant_id, kind, position) DO NOTHING
RETURNING id
"""
# Only for a tenant with a webhook (its low-balance alert's URL); no row otherwise.
_INSERT_TENANT_NOTIFICATION = """
INSERT INTO notifications (id, tenant_id, kind, url, payload)
SELECT $1, tenant_id, $3, url, $4::text::jsonb FROM low_balance_alerts WHERE tenant_id = $2
RETURNING id
"""
_SET_ARMED = "UPDATE low_balance_alerts SET armed = $2 WHERE tenant_id = ANY($1::uuid[])"
_SEALED_KEY = """
SELECT secret_key_id, secret_ciphertext FROM low_balance_alerts WHERE tenant_id = $1
"""
_LIST_NOTIFICATIONS = """
SELECT id, tenant_id, kind, position, url, payload::text AS payload, status, attempts,
       last_status, last_error, next_attempt_at, created_at, delivered_at
FROM notifications
WHERE tenant_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4
"""
_RECORD_ATTEMPT = """
UPDATE notifications
SET attempts = attempts + 1, status = $2, last_status = $3, last_error = $4,
    next_attempt_at = $5, delivered_at = CASE WHEN $2 = 'delivered' THEN now() END
WHERE id = $1
"""
_DUE = """
SELECT id FROM notifications
WHERE status = 'pending' AND next_attempt_at <= $1
ORDER BY next_attempt_at LIMIT $2
"""


async def upsert_alert(
    conn: Connection,
    tenant_id: UUID,
    threshold_nano: int,
    url: str,
    secret: tuple[str, bytes] | None,
) -> asyncpg.Record | None:
    """Create or change the alert; `secret` None keeps the current one (None if no alert)."""
    if secret is None:
        return await conn.fetchrow(_UPDATE_ALERT_KEEPING_KEY, tenant_id, threshold_nano, url)
    return await conn.fetchrow(_UPSERT_ALERT, tenant_id, threshold_nano, url, *secret)


async def get_alert(conn: Connection, tenant_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(_GET_ALERT, tenant_id)


async def delete_alert(conn: Connection, tenant_id: UUID) -> bool:
    status: str = await conn.execute(_DELETE_ALERT, tenant_id)
    return status.endswith(" 1")


async def alerts_for(conn: Connection, tenant_ids: list[UUID]) -> list[asyncpg.Record]:
    return await conn.fetch(_ALERTS_FOR, tenant_ids)


async def insert_notifications(
    conn: Connection, rows: list[tuple[UUID, UUID, int, str, str]]
) -> list[UUID]:
    if not rows:
        return []
    columns = list(zip(*rows, strict=True))
    inserted = await conn.fetch(_INSERT_NOTIFICATIONS, *(list(c) for c in columns))
    return [r["id"] for r in inserted]


async def insert_tenant_notification(
    conn: Connection, notification_id: UUID, tenant_id: UUID, kind: str, payload: str
) -> bool:
    inserted = await conn.fetchval(
        _INSERT_TENANT_NOTIFICATION, notification_id, tenant_id, kind, payload
    )
    return inserted is not None


async def set_armed(conn: Connection, tenant_ids: list[UUID], armed: bool) -> None:
    if tenant_ids:
        await conn.execute(_SET_ARMED, tenant_ids, armed)


async def secret_of(conn: Connection, tenant_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(_SEALED_KEY, tenant_id)


async def list_notifications(
    conn: Connection,
    tenant_id: UUID,
    *,
    before: tuple[datetime, UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        _LIST_NOTIFICATIONS,
        tenant_id,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )


async def record_attempt(
    conn: Connection,
    notification_id: UUID,
    *,
    status: str,
    http_status: int | None,
    error: str | None,
    next_attempt_at: datetime,
) -> None:
    await conn.execute(
        _RECORD_ATTEMPT, notification_id, status, http_status, error, next_attempt_at
    )


async def due_notifications(conn: Connection, now: datetime, limit: int) -> list[UUID]:
    return [r["id"] for r in await conn.fetch(_DUE, now, limit)]


NOTIFICATIONS_BY_STATUS = "SELECT status, count(*) AS n FROM notifications GROUP BY status"


async def notifications_by_status(conn: Connection) -> dict[str, int]:
    """Platform-wide webhook notifications by delivery status (for billing's /metrics)."""
    return {r["status"]: r["n"] for r in await conn.fetch(NOTIFICATIONS_BY_STATUS)}
