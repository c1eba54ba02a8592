"""One unit of work per request or CLI command: a transaction, its events, its invalidations.

Services never commit. The caller that owns the unit of work (an HTTP handler or a CLI command)
opens it; a service appends its events and writes its projections on `uow.conn`; the unit commits
once at the end, and only then publishes cache invalidations: a gateway that reloads on the
message must already see the committed row.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as redis

from tally.db import Connection, Pool
from tally.errors import TallyError
from tally.eventlog import Event, NewEvent, StoredEvent, append_events
from tally.events.tenant import Actor
from tally.invalidation import Kind, publish_invalidation
from tally.log import get_logger

log = get_logger(__name__)


class UnitOfWork:
    """The transaction a service writes in, and what to do once it commits."""

    def __init__(self, conn: Connection, actor: Actor) -> None:
        self.conn = conn
        self.actor = actor
        # Insertion-ordered and deduplicated: one message per changed object.
        self._invalidations: dict[tuple[Kind, str], None] = {}
        self._error_after_commit: TallyError | None = None

    async def record(self, *events: Event | NewEvent) -> list[StoredEvent]:
        """Append events in this transaction.

        A bare event is a one-off admin action and gets a fresh idempotency key; pass a
        `NewEvent` with a key derived from the facts when a retry must not repeat it.
        """
        batch = [
            item
            if isinstance(item, NewEvent)
            else NewEvent(item, f"{type(item).__name__}:{uuid.uuid4().hex}")
            for item in events
        ]
        return await append_events(self.conn, batch)

    def invalidate(self, kind: Kind, object_id: str) -> None:
        """Tell the gateways to drop `object_id` from their caches once this unit commits."""
        self._invalidations[(kind, object_id)] = None

    def fail_after_commit(self, error: TallyError) -> None:
        """Commit what was written, then answer with `error`.

        For refusals that must leave a trace, e.g. revoking a session whose refresh token was
        replayed: the revocation has to stick even though the request fails.
        """
        self._error_after_commit = error

    @property
    def invalidations(self) -> list[tuple[Kind, str]]:
        return list(self._invalidations)

    @property
    def error_after_commit(self) -> TallyError | None:
        return self._error_after_commit


@asynccontextmanager
async def unit_of_work(
    pool: Pool, redis_client: redis.Redis | None, actor: Actor
) -> AsyncIterator[UnitOfWork]:
    """Run the body in one transaction; commit, publish its invalidations, then return."""
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn, actor)
        yield uow
    await publish_after_commit(redis_client, uow.invalidations)
    if uow.error_after_commit is not None:
        raise uow.error_after_commit


async def publish_after_commit(
    redis_client: redis.Redis | None, invalidations: list[tuple[Kind, str]]
) -> None:
    """Publish invalidations of a committed change.

    The change is committed whatever happens here, so a Redis failure is logged rather than
    turned into an error the caller would read as "nothing happened"; gateways also bound
    the age of their cache entries, which covers a lost message (pub/sub is fire and forget).
    """
    for kind, object_id in invalidations:
        if redis_client is None:
            log.warning("no redis configured; invalidation not published", kind=kind)
            continue
        try:
            await publish_invalidation(redis_client, kind, object_id)
        except (redis.RedisError, OSError) as exc:
            log.warning(
                "invalidation not published", kind=kind, object_id=object_id, error=repr(exc)
            )
