"""A consumer run as its own process so a test can kill -9 it between write and checkpoint."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

import asyncpg

from tally.eventlog import StoredEvent, consume_batch
from tests.integration.eventlog import events  # noqa: F401  (registers the test events)


async def main(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)

    async def project_then_hang(conn: asyncpg.Connection, batch: Sequence[StoredEvent]) -> None:
        await conn.executemany(
            "INSERT INTO widget_projection (position) VALUES ($1)", [(e.position,) for e in batch]
        )
        print("written", flush=True)
        await asyncio.sleep(3600)

    # Another database's transaction can hold the read horizon back: wait for a batch.
    while not await consume_batch(pool, "widgets", project_then_hang, limit=50):
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
