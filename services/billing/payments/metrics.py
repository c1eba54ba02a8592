"""Payments' Prometheus metrics (served on billing's `/metrics`; the worker's stay in-process)."""

from __future__ import annotations

import prometheus_client

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
