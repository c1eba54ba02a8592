"""Alert webhook deliveries on billing's `/metrics`, read from Postgres at scrape time.

The worker delivers the webhooks and has no listener, so the notifications table, not an
in-process counter, is what billing exports (see `tally.database_metrics`).
"""

from __future__ import annotations

import prometheus_client
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from billing.alerts import repository
from tally.config import Settings
from tally.database_metrics import DatabaseCollector
from tally.db import Connection

# The notifications table's CHECK constraint; each exported at 0 too.
DELIVERY_STATUSES = ("pending", "delivered", "failed")
_HELP = (
    "Low-balance webhook notifications to tenants, by delivery status: pending (not sent yet or "
    "being retried), delivered, failed (gave up after TALLY_ALERT_WEBHOOK_MAX_ATTEMPTS)."
)


class AlertWebhooksCollector(DatabaseCollector):
    """`tally_alert_webhooks{status}`, platform-wide."""

    def empty(self) -> list[Metric]:
        return [GaugeMetricFamily("tally_alert_webhooks", _HELP, labels=["status"])]

    async def read(self, conn: Connection, settings: Settings) -> list[Metric]:
        family = GaugeMetricFamily("tally_alert_webhooks", _HELP, labels=["status"])
        counts = await repository.notifications_by_status(conn)
        for status in DELIVERY_STATUSES:
            family.add_metric([status], counts.get(status, 0))
        return [family]


ALERT_WEBHOOKS = AlertWebhooksCollector()
prometheus_client.REGISTRY.register(ALERT_WEBHOOKS)
