"""Webhook delivery jobs: one per notification, retried with backoff; a sweeper as backstop."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import aiohttp
from arq import Retry, cron, func

from billing.alerts import service
from tally.log import get_logger

log = get_logger(__name__)

DELIVER_JOB = "billing.deliver_notification"


def delivery_job_id(notification_id: UUID | str) -> str:
    return f"billing.notify:{notification_id}"


async def enqueue_deliveries(redis: Any, ids: list[UUID]) -> None:
    """Queue a delivery per notification (a no-op for one already queued)."""
    for notification_id in ids:
        await redis.enqueue_job(
            DELIVER_JOB, str(notification_id), _job_id=delivery_job_id(notification_id)
        )


async def deliver_notification(ctx: dict[str, Any], notification_id: str) -> str:
    """One delivery attempt; a failure is retried after the backoff the attempt recorded."""
    session: aiohttp.ClientSession | None = ctx.get("billing_http")
    if session is None or session.closed:
        session = ctx["billing_http"] = aiohttp.ClientSession()
    outcome = await service.deliver(
        ctx["pool"], UUID(notification_id), ctx["settings"], session=session
    )
    if outcome.retry_in is not None:
        raise Retry(defer=outcome.retry_in)
    return outcome.status


async def sweep_notifications(ctx: dict[str, Any]) -> int:
    """Queue deliveries that are due but not queued (their job was lost with a worker)."""
    ids = await service.due_notifications(ctx["pool"])
    await enqueue_deliveries(ctx["redis"], ids)
    return len(ids)


async def on_shutdown(ctx: dict[str, Any]) -> None:
    session: aiohttp.ClientSession | None = ctx.get("billing_http")
    if session is not None:
        await session.close()


FUNCTIONS = [
    # Attempts are counted in the notification row (TALLY_ALERT_WEBHOOK_MAX_ATTEMPTS); ARQ's own
    # cap only has to stay out of the way. No kept result, so the sweeper can queue it again.
    func(deliver_notification, name=DELIVER_JOB, max_tries=1000, keep_result=0, timeout=120)
]
CRON_JOBS = [cron(sweep_notifications, name="billing.sweep_notifications", second={15})]
