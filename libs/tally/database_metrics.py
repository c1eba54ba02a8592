"""Metrics read from Postgres when `/metrics` is scraped: state no single process counts.

Some figures belong to the whole platform, not to the process serving them: how far a fold is
behind the log, how many auto top-ups were charged (the worker charges them, and it has no
listener). A `DatabaseCollector` reads them with a few cheap queries when Prometheus scrapes, and
keeps the answer for `max_age` seconds so that several scrapers (or a scrape storm) cost one read.
Every replica of a service exports the same values: aggregate them with `max`, not `sum`.

prometheus_client collects synchronously, so the service's async `/metrics` handler calls
`refresh()` first and `collect()` then returns what was read.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable

import asyncpg
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from tally.config import Settings
from tally.db import Connection
from tally.log import get_logger

log = get_logger(__name__)

# A scrape must never hang on a slow or locked database: Prometheus times out at 10 s by default.
_STATEMENT_TIMEOUT = "SET LOCAL statement_timeout = '3s'"
_ACQUIRE_TIMEOUT_SECONDS = 2.0


class DatabaseCollector(Collector, ABC):
    """Metric families read from Postgres at scrape time, cached for `max_age` seconds."""

    max_age: float = 2.0

    def __init__(self) -> None:
        self._families: list[Metric] | None = None
        self._read_at = float("-inf")

    @abstractmethod
    def empty(self) -> list[Metric]:
        """The families without samples: what is exported before the first read, or after a
        failed one (a stale value would hide that the reading stopped)."""

    @abstractmethod
    async def read(self, conn: Connection, settings: Settings) -> list[Metric]:
        """The families with their current samples, read on `conn` (inside a transaction)."""

    def describe(self) -> Iterable[Metric]:
        # Lets the registry know the names without reading the database.
        return self.empty()

    def collect(self) -> Iterable[Metric]:
        return self._families if self._families is not None else self.empty()

    async def refresh(self, pool: asyncpg.Pool, settings: Settings) -> None:
        """Read the families again unless the last read is younger than `max_age`."""
        now = time.monotonic()
        if now - self._read_at < self.max_age:
            return
        # Claimed before awaiting: a concurrent scrape serves the previous read.
        self._read_at = now
        try:
            async with (
                pool.acquire(timeout=_ACQUIRE_TIMEOUT_SECONDS) as conn,
                conn.transaction(readonly=True),
            ):
                await conn.execute(_STATEMENT_TIMEOUT)
                self._families = await self.read(conn, settings)
        except Exception as exc:  # the rest of /metrics must still be served
            log.warning(
                "metrics read from Postgres failed",
                collector=type(self).__name__,
                error=f"{type(exc).__name__}: {exc}",
            )
            self._families = None
