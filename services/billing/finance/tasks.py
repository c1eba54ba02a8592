"""Finance's background jobs: issuing documents as purchases and refunds arrive, and the
month-end close. Both are idempotent, so ARQ retries and overlapping runs are harmless."""

from __future__ import annotations

from typing import Any

import structlog
from arq import cron
from arq.worker import func

from billing.finance.config import finance_config
from billing.finance.errors import CloseDeferred
from billing.finance.service import finance_service
from tally.log import get_logger

log = get_logger(__name__)


async def issue_documents(ctx: dict[str, Any]) -> int:
    """`finance.issue_documents`: invoices for new purchases, credit notes for new refunds."""
    structlog.contextvars.bind_contextvars(job="finance.issue_documents")
    try:
        return await finance_service.issue_pending_documents(
            ctx["pool"], finance_config(ctx["settings"])
        )
    finally:
        structlog.contextvars.clear_contextvars()


async def close_periods(ctx: dict[str, Any]) -> list[str]:
    """`finance.close_periods`: close every month that has ended and issue its statements.

    Runs several times an hour, so a month closes shortly after it ends in the finance time
    zone (whatever its UTC offset) and a worker that was down catches up; a run with nothing
    due does nothing.
    """
    structlog.contextvars.bind_contextvars(job="finance.close_periods")
    try:
        result = await finance_service.close_due_periods(
            ctx["pool"], finance_config(ctx["settings"])
        )
        return [closed.period for closed in result.closed]
    except CloseDeferred as exc:
        log.warning("finance close deferred", reason=exc.message)
        return []
    finally:
        structlog.contextvars.clear_contextvars()


FUNCTIONS: list[Any] = [
    func(issue_documents, name="finance.issue_documents"),
    func(close_periods, name="finance.close_periods"),
]
CRON_JOBS = [
    cron(issue_documents, name="finance.issue_documents", second={5, 25, 45}),
    cron(close_periods, name="finance.close_periods", minute={2, 17, 32, 47}, second=30),
]
