"""What every billing handler needs from the app: the caller, the pool, Redis, settings.

Kept apart from the handlers so each domain's endpoints.py stays a thin layer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from litestar.datastructures import State

from billing.errors import InvalidBillingRequest
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


def parse_moment(text: str | None, param: str) -> datetime | None:
    """An RFC 3339 / ISO 8601 query value with a timezone; errors name the query parameter.

    Taken as text rather than typed as datetime: the framework would name the Python argument
    (`since`) in its error instead of the query parameter (`from`).
    """
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise InvalidBillingRequest(
            f"{param} must be an ISO 8601 time such as 2026-01-01T00:00:00Z", param=param
        ) from None
    if moment.tzinfo is None:
        raise InvalidBillingRequest(f"{param} needs a timezone (e.g. Z)", param=param)
    return moment
