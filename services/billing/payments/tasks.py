"""Payments' ARQ jobs (named `payments.<verb>`), run by `tally worker`.

Each job takes the worker's ctx (`pool`, `settings`, `redis`) and is safe to run twice or
concurrently: every effect is keyed (see purchases.py), so at-least-once delivery of jobs is
enough for exactly-once money.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from arq import cron, func

from billing.payments import repository as repo
from billing.payments.autotopup import AutoTopups
from billing.payments.fulfilment import StripeEventProcessor
from billing.payments.reconciliation import RECONCILE, Reconciliation, yesterday
from billing.payments.runtime import runtime_for_job
from billing.payments.service import PROCESS_STRIPE_EVENT
from tally.log import get_logger

log = get_logger(__name__)

CHECK_AUTO_TOPUP = "payments.check_auto_topup"
# A stored event is retried this many times (one sweep a minute) before it needs an operator.
MAX_EVENT_ATTEMPTS = 50
# Stored events are left to their own job for this long before the sweeper steps in.
SWEEP_AFTER_SECONDS = 30.0


async def process_stripe_event(ctx: dict[str, Any], event_id: str) -> str:
    """Apply one stored Stripe event (queued by the webhook)."""
    async with runtime_for_job(ctx) as runtime:
        return await StripeEventProcessor(runtime).process(event_id)


async def sweep_stripe_events(ctx: dict[str, Any], older_than_seconds: float | None = None) -> int:
    """Process stored events whose job was lost or failed (oldest first); returns how many."""
    after = SWEEP_AFTER_SECONDS if older_than_seconds is None else older_than_seconds
    done = 0
    async with runtime_for_job(ctx) as runtime:
        async with runtime.pool.acquire() as conn:
            pending = await repo.list_unfinished_webhook_events(
                conn, older_than_seconds=after, max_attempts=MAX_EVENT_ATTEMPTS, limit=500
            )
        processor = StripeEventProcessor(runtime)
        for event_id in pending:
            try:
                await processor.process(event_id)
                done += 1
            except Exception:  # noqa: S112 - logged by process(); the next sweep retries it
                continue
    return done


async def check_auto_topup(ctx: dict[str, Any], tenant_id: str) -> str:
    """Top one tenant up if its rule says so. Billing's fold (or the gateway after a 402) may
    queue this with job id `autotopup:<tenant id>` whenever a tenant's balance drops."""
    async with runtime_for_job(ctx) as runtime:
        result = await AutoTopups(runtime).check(UUID(tenant_id))
    return result.outcome


async def check_auto_topups(ctx: dict[str, Any]) -> int:
    """Every minute: check every opted-in tenant; returns how many were charged."""
    async with runtime_for_job(ctx) as runtime:
        results = await AutoTopups(runtime).check_all()
    return sum(1 for r in results if r.outcome == "charged")


async def reconcile(ctx: dict[str, Any], run_id: str) -> int:
    """Run one queued reconciliation; returns its mismatch count."""
    async with runtime_for_job(ctx) as runtime:
        run = await Reconciliation(runtime).run(UUID(run_id))
    return run.mismatch_count


async def reconcile_yesterday(ctx: dict[str, Any]) -> int:
    """Daily: reconcile the previous UTC day."""
    if not ctx["settings"].stripe_api_key:
        return 0
    start, end = yesterday()
    async with runtime_for_job(ctx) as runtime:
        run = await Reconciliation(runtime).run_period(start, end)
    return run.mismatch_count


FUNCTIONS = [
    func(process_stripe_event, name=PROCESS_STRIPE_EVENT, max_tries=1),
    func(check_auto_topup, name=CHECK_AUTO_TOPUP, max_tries=1),
    func(reconcile, name=RECONCILE, max_tries=1),
]
CRON_JOBS = [
    cron(sweep_stripe_events, name="payments.sweep_stripe_events", second={15}),
    cron(check_auto_topups, name="payments.check_auto_topups", second={45}),
    cron(
        reconcile_yesterday, name="payments.reconcile_yesterday", hour={1}, minute={30}, second={0}
    ),
]
