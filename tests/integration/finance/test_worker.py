"""The month-end close as the worker runs it: the ARQ job, called directly and through a real
ARQ worker; a second run is a no-op."""

from __future__ import annotations

from typing import Any

import asyncpg
from arq import create_pool as create_arq_pool
from arq.connections import RedisSettings
from arq.worker import Worker

from billing import tasks as billing_tasks
from billing.finance import tasks as finance_tasks
from tally.config import get_settings
from tests.integration.finance.conftest import C, add_tenant, at, fold, purchased, record, used


async def test_the_close_job_closes_ended_months_once(pool: asyncpg.Pool) -> None:
    tenant = await add_tenant(pool, "Job")
    await record(pool, purchased(tenant, "cs_1", 10, 1190), at("2025-03-05"))
    await fold(pool)
    ctx: dict[str, Any] = {"pool": pool, "settings": get_settings()}

    closed = await finance_tasks.close_periods(ctx)
    assert closed[0] == "2025-03" and len(closed) >= 2  # every month since, up to the last one
    assert await finance_tasks.close_periods(ctx) == []
    assert await pool.fetchval("SELECT count(*) FROM finance_statements") == len(closed)
    assert await finance_tasks.issue_documents(ctx) == 0  # the close issued the invoice


async def test_the_close_job_runs_through_a_real_arq_worker(
    pool: asyncpg.Pool, redis_url: str
) -> None:
    tenant = await add_tenant(pool, "Worker")
    await record(pool, purchased(tenant, "cs_1", 10, 1190), at("2025-03-05"))
    await record(pool, used(tenant, "gpt-4o", C, C // 2, at=at("2025-03-06")), at("2025-03-06"))
    await fold(pool)
    redis_settings = RedisSettings.from_dsn(redis_url)
    queue = await create_arq_pool(redis_settings)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["settings"] = get_settings()
        ctx["pool"] = pool

    async def run_once() -> Any:
        job = await queue.enqueue_job("finance.close_periods")
        assert job is not None
        worker = Worker(
            functions=billing_tasks.FUNCTIONS,
            redis_settings=redis_settings,
            on_startup=startup,
            burst=True,
            handle_signals=False,
            poll_delay=0.05,
        )
        try:
            await worker.main()
        finally:
            await worker.close()
        return await job.result(timeout=30)

    try:
        first = await run_once()
        assert first[0] == "2025-03"
        assert await run_once() == []
    finally:
        await queue.aclose()
    statement = await pool.fetchval(
        "SELECT closing_balance_nano FROM finance_statements WHERE period = '2025-03'"
    )
    assert statement == 10 * C - C
    names = {job.name for job in billing_tasks.CRON_JOBS}
    assert {"finance.close_periods", "finance.issue_documents"} <= names
