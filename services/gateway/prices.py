"""Prices in memory: what a model costs a tenant at the current price-book version.

One entry per (tenant, model), dropped on a `prices` invalidation, after `gateway_cache_ttl_s`,
and at the moment a sheet already in the book takes effect (`effective_at` in the future), so
the gateway prices with exactly what the fold will price the usage event with again.
"""

from __future__ import annotations

import time
from datetime import datetime
from uuid import UUID

import asyncpg

from gateway import repository
from tally.pricebook import current_price_version, effective_price
from tally.tariff import Tariff


class PriceCache:
    def __init__(self, pool: asyncpg.Pool, *, ttl_s: float) -> None:
        self._pool = pool
        self._ttl = ttl_s
        self._entries: dict[tuple[UUID, str], tuple[Tariff | None, float, float]] = {}
        # Bumped by every invalidation: a load that started before one is not cached.
        self._generation = 0

    async def price(self, tenant_id: UUID, model: str, at: datetime) -> Tariff | None:
        """The tenant's price of `model` at `at` (now), or None when the model has no price."""
        entry = self._entries.get((tenant_id, model))
        now = time.monotonic()
        wall = at.timestamp()
        if entry is not None and entry[1] > now and entry[2] > wall:
            return entry[0]
        generation = self._generation
        async with self._pool.acquire() as conn:
            version = await current_price_version(conn)
            price = await effective_price(
                conn, tenant_id=tenant_id, model=model, version=version, at=at
            )
            change = await repository.next_price_change(conn, model, version, at)
        valid_until_wall = change.timestamp() if change is not None else float("inf")
        tariff = Tariff(price) if price is not None else None
        if generation == self._generation:
            self._entries[(tenant_id, model)] = (tariff, now + self._ttl, valid_until_wall)
        return tariff

    def clear(self) -> None:
        self._generation += 1
        self._entries = {}
