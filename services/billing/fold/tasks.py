"""The fold in the worker: per-shard ARQ jobs, woken by commits to the log.

Each worker process runs a waker: it LISTENs for commits (`EventNotifier`) and, on each wake-up
or every `fold_poll_seconds` at the latest, enqueues one `billing.fold_shard` job per shard
under a fixed job id. ARQ runs a job id at most once at a time and across workers, so shards
fold in parallel on different workers and never twice at once (the consumer's advisory lock
would serialise them anyway). A job folds its shard until caught up or out of time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from arq import func

from billing.fold.service import Folder
from tally.config import Settings
from tally.eventlog import EventNotifier
from tally.gc_tuning import tune_garbage_collector
from tally.live_balance import LiveBalances
from tally.log import get_logger

log = get_logger(__name__)

FOLD_JOB = "billing.fold_shard"
# A job gives the shard back after this long, so one busy shard cannot hold a worker slot.
JOB_BUDGET_SECONDS = 20.0
_RETRY_START = 0.05


def fold_job_id(index: int, count: int) -> str:
    return f"billing.fold:{index}/{count}"


async def fold_shard_job(ctx: dict[str, Any], index: int, count: int) -> int:
    """Fold one shard up to the log's tail (or until the time budget is spent)."""
    folder: Folder = ctx["billing_folder"]
    if count != folder.shard_count:
        return 0  # queued under another shard layout
    run = await folder.fold_shard(
        index, deadline=time.monotonic() + JOB_BUDGET_SECONDS, chase_tail=False
    )
    if run.events:
        log.info("folded", shard=index, events=run.events, batches=run.batches)
    return run.events


class FoldWaker:
    """Enqueues the shard jobs when the log changes (LISTEN/NOTIFY), polling as a fallback."""

    def __init__(self, redis: Any, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings
        self._notifier = EventNotifier(settings.database_url)

    async def run(self) -> None:
        count = self._settings.fold_shards
        try:
            await self._notifier.start()
        except Exception as exc:  # polling still folds, only later
            log.warning("fold notifier not listening; polling", error=repr(exc))
        pending = set(range(count))
        retry = _RETRY_START
        try:
            while True:
                for index in sorted(pending):
                    job = await self._redis.enqueue_job(
                        FOLD_JOB, index, count, _job_id=fold_job_id(index, count)
                    )
                    if job is not None:
                        pending.discard(index)
                if pending:
                    # That shard's job is queued or running; it may have read the log just
                    # before the commit that woke us, so enqueue again once it is done.
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, self._settings.fold_poll_seconds)
                    continue
                retry = _RETRY_START
                await self._notifier.wait(self._settings.fold_poll_seconds)
                pending = set(range(count))
        finally:
            await self._notifier.close()


async def on_startup(ctx: dict[str, Any]) -> None:
    settings: Settings = ctx["settings"]
    tune_garbage_collector()
    from billing.alerts.tasks import enqueue_deliveries

    async def notify(ids: list[Any]) -> None:
        await enqueue_deliveries(ctx["redis"], ids)

    ctx["billing_folder"] = Folder(
        ctx["pool"],
        shard_count=settings.fold_shards,
        live=LiveBalances(ctx["redis"]),
        batch_size=settings.fold_batch_size,
        notify=notify,
    )
    waker = FoldWaker(ctx["redis"], settings)
    ctx["billing_fold_waker"] = asyncio.get_running_loop().create_task(waker.run())


async def on_shutdown(ctx: dict[str, Any]) -> None:
    task: asyncio.Task[None] | None = ctx.get("billing_fold_waker")
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


FUNCTIONS = [
    func(
        fold_shard_job,
        name=FOLD_JOB,
        # The result is not kept: a kept result would block the next job with the same id.
        keep_result=0,
        max_tries=1,
        timeout=JOB_BUDGET_SECONDS + 60,
    )
]
