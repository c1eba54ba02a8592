"""Group commit: concurrent appends of one process share one transaction and one round trip.

Callers enqueue an event and wait. A dispatcher takes everything queued (up to `max_batch`),
appends it in one transaction and resumes each caller only after that transaction committed,
so an event is durable when its `append` returns. When a batch fails, every caller in it gets
the exception: nobody is told "done" for an event that is not in the log.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg

from tally.eventlog.base import Event
from tally.eventlog.store import NewEvent, StoredEvent, append_events

# Called after each committed batch with its size and its commit latency in seconds.
BatchObserver = Callable[[int, float], None]
_Pending = tuple[NewEvent, "asyncio.Future[StoredEvent]"]


class AppenderClosed(RuntimeError):
    """The appender is shutting down and takes no new events."""


class GroupCommitAppender:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 2048,
        max_inflight: int = 2,
        on_batch: BatchObserver | None = None,
    ) -> None:
        self._pool = pool
        self._max_batch = max_batch
        # Two batches in flight keep the database busy while the previous commit returns.
        self._slots = asyncio.Semaphore(max_inflight)
        self._queue: list[_Pending] = []
        self._queued = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._closed = False
        self._on_batch = on_batch

    async def append(self, event: Event, idempotency_key: str) -> StoredEvent:
        """Append one event; return once the batch holding it has committed."""
        if self._closed:
            raise AppenderClosed("the event appender is closed")
        future: asyncio.Future[StoredEvent] = asyncio.get_running_loop().create_future()
        self._queue.append((NewEvent(event, idempotency_key), future))
        self._queued.set()
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(self._dispatch())
        # A caller cancelled here cancels only its own future: the batch task carries on, and
        # `_commit` skips futures that are already done.
        return await future

    async def _dispatch(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._queued.clear()
                await self._queued.wait()
                continue
            await self._slots.acquire()
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            task = asyncio.get_running_loop().create_task(self._commit(batch))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)

    async def _commit(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            # No explicit transaction: the batch is one INSERT statement, atomic and committed
            # on its own, so BEGIN and COMMIT would only add two round trips per batch. (The
            # lookup of duplicates, when there are any, only reads committed rows.)
            async with self._pool.acquire() as conn:
                results = await append_events(conn, [item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            self._slots.release()
        if self._on_batch is not None:
            self._on_batch(len(batch), time.perf_counter() - started)
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Stop taking events and wait until everything queued has committed (or failed)."""
        self._closed = True
        self._queued.set()
        if self._dispatcher is not None:
            await self._dispatcher
        await asyncio.gather(*list(self._commits), return_exceptions=True)
