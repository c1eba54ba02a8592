"""SQL the balance view reads: the tenant's shard checkpoint and the unfolded tail."""

from __future__ import annotations

from uuid import UUID

from tally.db import Connection
from tally.eventlog import Checkpoint, StoredEvent
from tally.eventlog.store import stored_from_row

_SHARD_OF = "SELECT mod(hashtextextended($1::text, 0) & 9223372036854775807, $2)::int"
_CHECKPOINT = (
    "SELECT txid::text::bigint AS txid, position FROM consumer_checkpoints WHERE consumer = $1"
)
# Every committed event of the tenant after the checkpoint (not only those below the snapshot
# horizon: this is a view of what the fold is about to apply, not a fold).
_TAIL = """
SELECT position, txid::text::bigint AS txid, type, schema_version, tenant_id, idempotency_key,
       data::text AS data, recorded_at
FROM events
WHERE tenant_id = $1 AND (txid, position) > ($2::text::xid8, $3)
ORDER BY events.txid, events.position
LIMIT $4
"""


async def shard_of(conn: Connection, tenant_id: UUID, count: int) -> int:
    shard: int = await conn.fetchval(_SHARD_OF, str(tenant_id), count)
    return shard


async def checkpoint(conn: Connection, consumer: str) -> Checkpoint:
    row = await conn.fetchrow(_CHECKPOINT, consumer)
    return Checkpoint(row["txid"], row["position"]) if row else Checkpoint()


async def unfolded_tail(
    conn: Connection, tenant_id: UUID, after: Checkpoint, limit: int
) -> list[StoredEvent]:
    rows = await conn.fetch(_TAIL, tenant_id, str(after.txid), after.position, limit)
    return [stored_from_row(row) for row in rows]
