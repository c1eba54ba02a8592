"""SQL of grant expiry: which grants are due, read from the folded credit lots."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from tally.db import Connection

# Grants folded into lots, past their expiry, not expired yet. A grant not folded yet is found
# on a later run, once folded.
_DUE_GRANTS = """
SELECT tenant_id, reference FROM credit_lots
WHERE expires_at IS NOT NULL AND expired_position IS NULL AND expires_at <= $1
  AND lot_id LIKE 'grant:%'
ORDER BY expires_at LIMIT $2
"""


async def due_grants(conn: Connection, now: datetime, limit: int) -> list[tuple[UUID, UUID]]:
    return [
        (r["tenant_id"], UUID(r["reference"])) for r in await conn.fetch(_DUE_GRANTS, now, limit)
    ]
