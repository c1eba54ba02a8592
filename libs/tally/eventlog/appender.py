"""Group commit: concurrent appends of one process share one transaction and one round trip.

A caller that finds a slot free and nobody waiting appends its event at once, in its own task;
callers arriving while `max_inflight` batches are running queue up, and the next free slot
appends everything queued (up to `max_batch`) in one statement. Each caller resumes only after
the statement holding its event committed, so an event is durable when `append` returns. When a
batch fails, every caller in it gets the exception: nobody is told "done" for an event that is
not in the log.

With `notify_interval`, batches wake the log's listeners at most that often: a batch within
the interval after a notifying one commits quietly, and one notification follows at the end
of the interval. Under steady traffic the fold then wakes a few dozen times a second instead of
once per commit, and a commit no longer signals the listening backends on the request's path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from tally.eventlog.base import Event
from tally.eventlog.store import NOTIFY, NewEvent, StoredEvent, append_events
from tally.log import get_logger

log = get_logger(__name__)

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
        notify_interval: float = 0.0,
    ) -> None:
        self._pool = pool
        self._max_batch = max_batch
        # Two batches in flight keep the database busy while the previous commit returns.
        self._max_inflight = max_inflight
        self._inflight = 0
        self._queue: list[_Pending] = []
        # Connections kept between batches: checking one out of the pool and back in costs
        # a task switch each time (asyncpg shields the release in a task of its own).
        self._idle: list[PoolConnectionProxy] = []
        self._quiet = asyncio.Event()  # set while no batch runs and none waits
        self._quiet.set()
        self._drains: set[asyncio.Task[None]] = set()
        self._closed = False
        self._on_batch = on_batch
        self._notify_interval = notify_interval
        self._notified_at = float("-inf")  # loop time of the last notifying batch
        self._notify_owed = False  # a quiet batch committed since
        self._notify_timer: asyncio.TimerHandle | None = None

    async def append(self, event: Event, idempotency_key: str) -> StoredEvent:
        """Append one event; return once the batch holding it has committed."""
        if self._closed:
            raise AppenderClosed("the event appender is closed")
        item = NewEvent(event, idempotency_key)
        if self._inflight < self._max_inflight and not self._queue:
            # A free slot and nobody waiting: commit this event at once in the caller's own
            # task (no queue, no task switch). Events arriving meanwhile queue up and share
            # the next batch. A caller cancelled here leaves its event's fate open, as a
            # caller that stops waiting for a queued batch does.
            self._inflight += 1
            self._quiet.clear()
            try:
                return (await self._append([item]))[0]
            finally:
                self._slot_freed()
        future: asyncio.Future[StoredEvent] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        # A caller cancelled here cancels only its own future: the batch carries on, and
        # `_commit` skips futures that are already done.
        return await future

    def _slot_freed(self) -> None:
        self._inflight -= 1
        if self._queue and self._inflight < self._max_inflight:
            self._inflight += 1
            task = asyncio.get_running_loop().create_task(self._drain())
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        elif self._inflight == 0 and not self._queue:
            self._quiet.set()

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._commit(batch)
        finally:
            self._inflight -= 1
            if self._inflight == 0 and not self._queue:
                self._quiet.set()

    async def _append(self, items: list[NewEvent]) -> list[StoredEvent]:
        started = time.perf_counter()
        conn = self._idle.pop() if self._idle else await self._pool.acquire()
        notify = True
        if self._notify_interval:
            now = asyncio.get_running_loop().time()
            notify = now - self._notified_at >= self._notify_interval
            if notify:
                self._notified_at = now
        try:
            # No explicit transaction: the batch is one INSERT statement, atomic and committed
            # on its own, so BEGIN and COMMIT would only add two round trips per batch. (The
            # lookup of duplicates, when there are any, only reads committed rows.)
            results = await append_events(conn, items, notify=notify)
        except BaseException:
            # The pool resets the connection, or replaces it if it broke.
            await self._pool.release(conn)
            raise
        if self._closed:
            await self._pool.release(conn)
        else:
            self._idle.append(conn)
        if not notify:
            self._owe_notification()
        if self._on_batch is not None:
            self._on_batch(len(items), time.perf_counter() - started)
        return results

    def _owe_notification(self) -> None:
        self._notify_owed = True
        if self._notify_timer is None:
            loop = asyncio.get_running_loop()
            self._notify_timer = loop.call_at(
                self._notified_at + self._notify_interval, self._send_notification
            )

    def _send_notification(self) -> None:
        self._notify_timer = None
        if not self._notify_owed:
            return
        self._notify_owed = False
        self._notified_at = asyncio.get_running_loop().time()
        task = asyncio.get_running_loop().create_task(self._notify())
        self._drains.add(task)
        task.add_done_callback(self._drains.discard)

    async def _notify(self) -> None:
        try:
            await self._pool.execute(NOTIFY)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The listeners poll as well: a lost notification only delays the fold.
            log.warning("event notification failed", error=repr(exc))

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            results = await self._append([item for item, _ in batch])
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        """Stop taking events and wait until everything queued has committed (or failed)."""
        self._closed = True
        await self._quiet.wait()
        if self._notify_timer is not None:
            self._notify_timer.cancel()
            self._send_notification()
        if self._drains:
            await asyncio.gather(*self._drains, return_exceptions=True)
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._pool.release(conn)
