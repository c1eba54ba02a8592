"""How far a consumer (or one shard of it) is behind the head of the log.

Read by monitoring, never by the consumers themselves: it takes no lock and writes nothing.
Every committed event after the consumer's checkpoint counts, including those above the
snapshot horizon that the consumer cannot read yet, because a long transaction holding the
horizon back delays the projections just as a slow consumer does.
"""

from __future__ import annotations

import msgspec

from tally.db import Connection
from tally.eventlog.reader import Shard, load_checkpoint

# The events behind a shard, oldest first in reading order, counted up to $5; the age of the
# oldest of them. A shard's filter is evaluated per row, so a shard of S scans about S rows per
# event it counts: the limit keeps a scrape during a large backlog cheap.
_LAG = """
SELECT count(*) AS events,
       coalesce(greatest(extract(epoch FROM clock_timestamp() - min(recorded_at)), 0), 0)::float8
           AS seconds
FROM (
    SELECT recorded_at
    FROM events
    WHERE (txid, position) > ($1::text::xid8, $2)
      AND ($3::int IS NULL OR
           CASE WHEN tenant_id IS NULL THEN $4::int = 0
                ELSE mod(hashtextextended(tenant_id::text, 0) & 9223372036854775807, $3) = $4
           END)
    ORDER BY txid, position
    LIMIT $5
) behind
"""


class ConsumerLag(msgspec.Struct, frozen=True):
    """Events committed after a consumer's checkpoint (at most the limit asked for), and the
    age in seconds of the oldest of them (0 when it is caught up)."""

    events: int
    seconds: float


async def consumer_lag(
    conn: Connection, consumer: str, *, shard: Shard | None = None, limit: int = 100_000
) -> ConsumerLag:
    """How far `consumer` (reading `shard` of the log, or all of it) is behind the head."""
    checkpoint = await load_checkpoint(conn, consumer)
    row = await conn.fetchrow(
        _LAG,
        str(checkpoint.txid),
        checkpoint.position,
        shard.count if shard else None,
        shard.index if shard else None,
        limit,
    )
    assert row is not None
    return ConsumerLag(events=row["events"], seconds=row["seconds"])
