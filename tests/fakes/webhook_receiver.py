"""A customer's webhook endpoint, and a real ARQ worker that delivers Tally's notifications to it.

Used by the low-balance alert tests and the payment-failure tests: both go out through the same
signed, retried delivery.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from arq.connections import RedisSettings
from arq.worker import Worker

from billing.alerts import tasks as alert_tasks
from tally.config import Settings


class Receiver:
    """Records every call; fails the first `failures` with 503, then answers 204."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], bytes, float]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read(), time.monotonic()))
        if len(self.calls) <= self.failures:
            return web.Response(status=503)
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.url = f"http://127.0.0.1:{port}/hook"
    yield hook
    await runner.cleanup()


async def run_delivery_worker(
    pool: asyncpg.Pool, redis_url: str, settings: Settings, *, sweep: bool = False
) -> None:
    """A real ARQ worker with the delivery job, in burst mode: it stops when the queue,
    retries included, is empty. `sweep` first queues what is due, as the worker's cron does."""
    from arq import create_pool

    if sweep:
        arq_redis = await create_pool(RedisSettings.from_dsn(redis_url))
        try:
            await alert_tasks.sweep_notifications({"pool": pool, "redis": arq_redis})
        finally:
            await arq_redis.aclose()

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["pool"] = pool
        ctx["settings"] = settings

    worker = Worker(
        functions=alert_tasks.FUNCTIONS,
        redis_settings=RedisSettings.from_dsn(redis_url),
        on_startup=startup,
        on_shutdown=alert_tasks.on_shutdown,
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
    )
    try:
        await worker.main()
    finally:
        await worker.close()
