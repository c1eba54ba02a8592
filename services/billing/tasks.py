"""Billing's background jobs, run by the ARQ worker (`tally worker`).

Each domain keeps its jobs in its own `tasks.py`; this module only gathers them for
`tally.worker`: FUNCTIONS, CRON_JOBS and the STARTUP / SHUTDOWN hooks.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from arq import cron

from billing.alerts import tasks as alert_tasks
from billing.balances import tasks as balance_tasks
from billing.finance import tasks as finance_tasks
from billing.fold import tasks as fold_tasks
from billing.grants import tasks as grant_tasks
from billing.payments import tasks as payments_tasks

HEARTBEAT_KEY = "tally:worker:heartbeat"


async def record_heartbeat(ctx: dict[str, Any]) -> None:
    """Stamp the time in Redis so operators (and `readyz`) can see a worker is alive."""
    await ctx["redis"].set(HEARTBEAT_KEY, str(time.time()), ex=300)


FUNCTIONS: list[Any] = [
    *fold_tasks.FUNCTIONS,
    *alert_tasks.FUNCTIONS,
    *finance_tasks.FUNCTIONS,
    *payments_tasks.FUNCTIONS,
]
CRON_JOBS = [
    cron(record_heartbeat, second={0, 30}, run_at_startup=True),
    *grant_tasks.CRON_JOBS,
    *balance_tasks.CRON_JOBS,
    *alert_tasks.CRON_JOBS,
    *finance_tasks.CRON_JOBS,
    *payments_tasks.CRON_JOBS,
]
Hook = Callable[[dict[str, Any]], Awaitable[None]]
STARTUP: list[Hook] = [fold_tasks.on_startup]
SHUTDOWN: list[Hook] = [fold_tasks.on_shutdown, alert_tasks.on_shutdown]
