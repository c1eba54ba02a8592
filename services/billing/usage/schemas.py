"""Responses of usage analytics and the operator overview."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import msgspec


class UsageTotals(msgspec.Struct, kw_only=True, omit_defaults=True):
    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    images: int = 0
    # What the tenant was charged; of it, paid from purchased credits, promotional, uncovered.
    charge_nano: int = 0
    paid_nano: int = 0
    promo_nano: int = 0
    unfunded_nano: int = 0
    # Platform only (operators and finance): provider cost and the platform's margin.
    base_nano: int | None = None
    margin_nano: int | None = None


class ModelUsage(msgspec.Struct, kw_only=True):
    model: str
    totals: UsageTotals


class KeyUsage(msgspec.Struct, kw_only=True):
    key_id: UUID
    totals: UsageTotals


class Series(msgspec.Struct, kw_only=True):
    """One line of a chart: values aligned with `UsageReport.buckets` (zero-filled)."""

    name: str
    requests: list[int]
    tokens: list[int]
    charge_nano: list[int]


class UsageReport(msgspec.Struct, kw_only=True):
    tenant_id: UUID
    since: datetime
    until: datetime
    granularity: Literal["hour", "day"]
    group_by: Literal["model", "key", "none"]
    totals: UsageTotals
    by_model: list[ModelUsage]
    by_key: list[KeyUsage]
    # Bucket starts (UTC) of the chart's x axis, and one series per group.
    buckets: list[datetime]
    series: list[Series]


class TenantOverview(msgspec.Struct, kw_only=True):
    tenant_id: UUID
    tenant_name: str | None
    totals: UsageTotals


class Overview(msgspec.Struct, kw_only=True):
    """Revenue (charges), base cost and margin for a period, by model and by tenant."""

    since: datetime
    until: datetime
    totals: UsageTotals
    by_model: list[ModelUsage]
    by_tenant: list[TenantOverview]
