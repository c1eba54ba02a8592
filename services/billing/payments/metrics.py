"""Payments' Prometheus metrics.

The counters below count in the process that does the work: `STRIPE_WEBHOOKS` in billing (served
on its `/metrics`), `STRIPE_EVENTS` and `AUTO_TOPUPS` in the worker, which has no listener, so
those two are not scraped. What operators watch for those is `PaymentsCollector`: counts read
from Postgres when billing's `/metrics` is scraped, the same whichever worker did the work.
"""

from __future__ import annotations

import prometheus_client
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from billing.payments import repository as repo
from tally.config import Settings
from tally.database_metrics import DatabaseCollector
from tally.db import Connection

STRIPE_WEBHOOKS = prometheus_client.Counter(
    "tally_stripe_webhooks_total",
    "Stripe webhook deliveries by result: stored, duplicate, refused (bad signature or body).",
    ["result"],
)
STRIPE_EVENTS = prometheus_client.Counter(
    "tally_stripe_events_processed_total",
    "Stored Stripe events processed, by Stripe type and status (processed, ignored, failed).",
    ["type", "status"],
)
AUTO_TOPUPS = prometheus_client.Counter(
    "tally_auto_topups_total",
    "Auto top-up charges attempted, by result: charged, declined, unknown (Stripe unreachable).",
    ["result"],
)

# Every status the tables allow (their CHECK constraints), exported at 0 too, so a series exists
# before its first order or event and `delta()` over it starts from the first one.
ORDER_STATUSES = ("creating", "open", "processing", "paid", "failed", "expired", "error")
STRIPE_EVENT_STATUSES = ("pending", "processed", "ignored", "failed")


class PaymentsCollector(DatabaseCollector):
    """Auto top-up orders and stored Stripe events by status, platform-wide."""

    def empty(self) -> list[Metric]:
        return list(self._new_families())

    @staticmethod
    def _new_families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "tally_auto_topup_orders",
                "Auto top-up orders ever created, by status: paid (charged and credited), failed "
                "(declined: auto top-up turned off), error, processing (delayed payment), "
                "creating (Stripe's answer not known yet; retried).",
                labels=["status"],
            ),
            GaugeMetricFamily(
                "tally_stripe_webhook_events",
                "Stripe webhook events stored, by processing status: pending, processed, "
                "ignored (a type Tally does not act on), failed (retried by the sweeper).",
                labels=["status"],
            ),
        )

    async def read(self, conn: Connection, settings: Settings) -> list[Metric]:
        orders, events = self._new_families()
        counts = await repo.auto_topup_orders_by_status(conn)
        for status in ORDER_STATUSES:
            orders.add_metric([status], counts.get(status, 0))
        counts = await repo.stripe_events_by_status(conn)
        for status in STRIPE_EVENT_STATUSES:
            events.add_metric([status], counts.get(status, 0))
        return [orders, events]


PAYMENTS_STATE = PaymentsCollector()
prometheus_client.REGISTRY.register(PAYMENTS_STATE)
