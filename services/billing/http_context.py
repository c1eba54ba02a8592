"""What every billing handler needs from the app: the caller, the pool, Redis, settings.

Kept apart from the handlers so each domain's endpoints.py stays a thin layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar.datastructures import State

from tally.auth import Principal
from tally.db import Connection
from tally.events.tenant import Actor
from tally.live_balance import LiveBalances


def actor_of(principal: Principal) -> Actor:
    return Actor(kind="user", id=str(principal.user_id))


def is_platform(principal: Principal) -> bool:
    """Operators and finance see platform figures (base cost, margin) in analytics."""
    return principal.has_platform_role("operator", "finance")


@asynccontextmanager
async def connection(state: State) -> AsyncIterator[Connection]:
    async with state.pool.acquire() as conn:
        yield conn


def live_balances(state: State) -> LiveBalances | None:
    live: Any = getattr(state, "live", None)
    return live if isinstance(live, LiveBalances) else None
