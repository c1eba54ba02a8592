"""Billing's background jobs, run by the ARQ worker (`tally worker`)."""

from __future__ import annotations

import time
from typing import Any

from arq import cron

from billing.finance import tasks as finance_tasks
from billing.payments import tasks as payments_tasks

HEARTBEAT_KEY = "tally:worker:heartbeat"


async def record_heartbeat(ctx: dict[str, Any]) -> None:
    """Stamp the time in Redis so operators (and `readyz`) can see a worker is alive."""
    await ctx["redis"].set(HEARTBEAT_KEY, str(time.time()), ex=300)


FUNCTIONS: list[Any] = [*finance_tasks.FUNCTIONS, *payments_tasks.FUNCTIONS]
CRON_JOBS = [
    cron(record_heartbeat, second={0, 30}, run_at_startup=True),
    *finance_tasks.CRON_JOBS,
    *payments_tasks.CRON_JOBS,
]
