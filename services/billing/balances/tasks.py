"""Live-balance upkeep: reconcile with Postgres every minute, reap lost holds every 15 s."""

from __future__ import annotations

from typing import Any

import msgspec
from arq import cron

from billing.balances.reconcile import Reconciler, reap_expired_holds


async def reconcile_live_balances(ctx: dict[str, Any]) -> dict[str, int]:
    """Compare Redis with Postgres, report drift and repair it; rebuild what Redis lost."""
    report = await Reconciler(ctx["pool"], ctx["redis"], ctx["settings"]).run()
    result: dict[str, int] = msgspec.structs.asdict(report)
    return result


async def reap_holds(ctx: dict[str, Any]) -> int:
    """Drop credit holds of requests that never settled."""
    return await reap_expired_holds(ctx["redis"])


CRON_JOBS = [
    cron(reconcile_live_balances, name="billing.reconcile_live_balances", second={45}),
    cron(reap_holds, name="billing.reap_holds", second={5, 20, 35, 50}),
]
