"""What every payments service object needs: the pool, settings, Stripe, Redis, the job queue.

The HTTP app holds one `PaymentsRuntime` for its life; each ARQ job builds one from its ctx and
closes it afterwards. Stripe is connected lazily, so a service without a Stripe key still starts
(and answers 503 `payments_not_configured` only where Stripe is needed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as redis

from billing.payments.stripe_gateway import StripeGateway
from tally.config import Settings
from tally.log import get_logger

log = get_logger(__name__)

# (job function name, args, job id) -> None. Raising means "not queued": the caller decides.
Enqueue = Callable[[str, tuple[Any, ...], str], Awaitable[None]]


@dataclass
class PaymentsRuntime:
    pool: asyncpg.Pool
    settings: Settings
    redis: redis.Redis | None = None
    enqueue: Enqueue | None = None
    _stripe: StripeGateway | None = field(default=None, init=False)

    def stripe(self) -> StripeGateway:
        """The Stripe gateway, created on first use (raises PaymentsNotConfigured without a key)."""
        if self._stripe is None:
            self._stripe = StripeGateway(self.settings)
        return self._stripe

    async def close(self) -> None:
        if self._stripe is not None:
            await self._stripe.close()
            self._stripe = None


def arq_enqueue(arq_redis: Any) -> Enqueue:
    """An Enqueue on an ArqRedis pool; the job id makes a second enqueue of one job a no-op."""

    async def enqueue(function: str, args: tuple[Any, ...], job_id: str) -> None:
        await arq_redis.enqueue_job(function, *args, _job_id=job_id)

    return enqueue


@asynccontextmanager
async def runtime_for_job(ctx: dict[str, Any]) -> AsyncIterator[PaymentsRuntime]:
    """A runtime over an ARQ job's ctx (`pool`, `settings`, `redis`), closed after the job."""
    arq_redis = ctx.get("redis")
    runtime = PaymentsRuntime(
        pool=ctx["pool"],
        settings=ctx["settings"],
        redis=arq_redis,
        enqueue=arq_enqueue(arq_redis) if arq_redis is not None else None,
    )
    try:
        yield runtime
    finally:
        await runtime.close()
