"""Events and helpers shared by the event-log tests."""

from __future__ import annotations

import asyncio
from uuid import UUID

import asyncpg

from tally.eventlog import Checkpoint, Event, StoredEvent, read_events


class WidgetCounted(Event, frozen=True):
    """A test fact: writer `writer` counted widget number `n`."""

    writer: int
    n: int
    tenant_id: UUID | None = None
    note: str = ""


# The read horizon is the oldest transaction running anywhere on the Postgres server (xids are
# server-wide), so other databases' transactions can hold a reader back for a while: tests wait
# for it to catch up instead of taking one empty read as "done".
CATCH_UP_SECONDS = 60


async def read_until(conn: asyncpg.Connection, count: int) -> list[StoredEvent]:
    deadline = asyncio.get_running_loop().time() + CATCH_UP_SECONDS
    while True:
        read = await read_events(conn, Checkpoint())
        if len(read) >= count or asyncio.get_running_loop().time() > deadline:
            return read
        await asyncio.sleep(0.01)
