"""SQL of the ledger listing (tenant-scoped, newest first, keyset-paginated)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from tally.db import Connection

_PAGE = """
SELECT position, kind, amount_nano, balance_after_nano, description, occurred_at, reference,
       key_id, model, paid_nano, promo_nano, unfunded_nano
FROM ledger_entries
WHERE tenant_id = $1
  AND ($2::bigint IS NULL OR position < $2)
  AND ($3::text[] IS NULL OR kind = ANY($3))
  AND ($4::timestamptz IS NULL OR occurred_at >= $4)
  AND ($5::timestamptz IS NULL OR occurred_at < $5)
ORDER BY position DESC
LIMIT $6
"""


async def page(
    conn: Connection,
    tenant_id: UUID,
    *,
    before_position: int | None,
    kinds: list[str] | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(_PAGE, tenant_id, before_position, kinds, since, until, limit)
