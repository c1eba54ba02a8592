"""Fold lag on billing's `/metrics`: events and seconds each fold shard is behind the log head.

Read from `consumer_checkpoints` and `events` when Prometheus scrapes (see
`tally.database_metrics`), so it needs nothing from the workers, which have no listener. Every
billing replica exports the same values: aggregate with `max by (shard)`.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from tally.config import Settings
from tally.database_metrics import DatabaseCollector
from tally.db import Connection
from tally.eventlog import Shard
from tally.eventlog.lag import consumer_lag
from tally.live_balance import fold_consumer_name

# Events behind are counted up to this many per refresh, shared out between the shards (each
# shard's filter is per row, so counting N events of one shard of S scans about N*S rows).
COUNT_BUDGET = 100_000
_EVENTS_HELP = (
    "Committed events the billing fold shard has not applied yet (counted up to "
    f"{COUNT_BUDGET:,} / TALLY_FOLD_SHARDS, so a larger backlog reads as that bound)."
)
_SECONDS_HELP = (
    "Age of the oldest event the billing fold shard has not applied yet, in seconds (0 when "
    "caught up): how stale balances, ledgers and rollups of its tenants are."
)


class FoldLagCollector(DatabaseCollector):
    """`tally_fold_lag_events{shard}` and `tally_fold_lag_seconds{shard}`, one per fold shard."""

    def empty(self) -> list[Metric]:
        return list(self._new_families())

    @staticmethod
    def _new_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("tally_fold_lag_events", _EVENTS_HELP, labels=["shard"]),
            GaugeMetricFamily("tally_fold_lag_seconds", _SECONDS_HELP, labels=["shard"]),
        )

    async def read(self, conn: Connection, settings: Settings) -> list[Metric]:
        events, seconds = self._new_families()
        count = settings.fold_shards
        limit = max(1_000, COUNT_BUDGET // count)
        for index in range(count):
            # As the fold reads: one shard is the whole log, without a per-row filter.
            lag = await consumer_lag(
                conn,
                fold_consumer_name(index, count),
                shard=Shard(index, count) if count > 1 else None,
                limit=limit,
            )
            events.add_metric([str(index)], lag.events)
            seconds.add_metric([str(index)], lag.seconds)
        return [events, seconds]


FOLD_LAG = FoldLagCollector()
prometheus_client.REGISTRY.register(FOLD_LAG)
