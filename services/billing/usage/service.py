"""Usage analytics for tenants and the operators' overview, from the hourly rollups."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg

from billing.errors import InvalidBillingRequest
from billing.usage import repository
from billing.usage.schemas import (
    KeyUsage,
    ModelUsage,
    Overview,
    Series,
    TenantOverview,
    UsageReport,
    UsageTotals,
)
from tally.db import Connection

_FIELDS = (
    "requests",
    "errors",
    "input_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "images",
    "charge_nano",
    "paid_nano",
    "promo_nano",
    "unfunded_nano",
)
_MAX_BUCKETS = 24 * 93  # a quarter by hour, eight years by day
_STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


def _window(
    since: datetime | None, until: datetime | None, granularity: str
) -> tuple[datetime, datetime]:
    for name, value in (("from", since), ("to", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidBillingRequest(f"{name} needs a timezone", param=name)
    end = until or datetime.now(UTC)
    start = since or end - timedelta(days=30)
    if start >= end:
        raise InvalidBillingRequest("from must be before to", param="from")
    if (end - start) / _STEP[granularity] > _MAX_BUCKETS:
        raise InvalidBillingRequest(
            f"the range holds more than {_MAX_BUCKETS} {granularity}s; narrow it or use days",
            param="from",
        )
    return start.astimezone(UTC), end.astimezone(UTC)


def _truncate(moment: datetime, granularity: str) -> datetime:
    moment = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return moment.replace(hour=0) if granularity == "day" else moment


class _Sum:
    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, int] = dict.fromkeys((*_FIELDS, "base_nano", "margin_nano"), 0)

    def add(self, row: asyncpg.Record) -> None:
        for name in self.values:
            self.values[name] += row[name] or 0

    def totals(self, platform: bool) -> UsageTotals:
        values: dict[str, Any] = {name: self.values[name] for name in _FIELDS}
        if platform:
            values["base_nano"] = self.values["base_nano"]
            values["margin_nano"] = self.values["margin_nano"]
        return UsageTotals(**values)


def _sorted_by_charge(items: Iterable[tuple[Any, _Sum]]) -> list[tuple[Any, _Sum]]:
    return sorted(items, key=lambda item: (-item[1].values["charge_nano"], str(item[0])))


class UsageService:
    async def report(
        self,
        conn: Connection,
        tenant_id: UUID,
        *,
        since: datetime | None,
        until: datetime | None,
        granularity: Literal["hour", "day"],
        group_by: Literal["model", "key", "none"],
        model: str | None,
        key_id: UUID | None,
        platform: bool,
    ) -> UsageReport:
        """Totals, breakdowns by model and key, and zero-filled chart series for a window."""
        start, end = _window(since, until, granularity)
        rows = await repository.tenant_usage(
            conn,
            tenant_id,
            since=start,
            until=end,
            granularity=granularity,
            model=model,
            key_id=key_id,
        )
        buckets: list[datetime] = []
        cursor = _truncate(start, granularity)
        while cursor < end:
            buckets.append(cursor)
            cursor += _STEP[granularity]
        index = {bucket: i for i, bucket in enumerate(buckets)}
        total = _Sum()
        by_model: dict[str, _Sum] = {}
        by_key: dict[UUID, _Sum] = {}
        series: dict[str, Series] = {}
        for row in rows:
            total.add(row)
            by_model.setdefault(row["model"], _Sum()).add(row)
            by_key.setdefault(row["key_id"], _Sum()).add(row)
            name = {"model": row["model"], "key": str(row["key_id"]), "none": "total"}[group_by]
            line = series.get(name)
            if line is None:
                zeros = [0] * len(buckets)
                line = series[name] = Series(
                    name=name, requests=list(zeros), tokens=list(zeros), charge_nano=list(zeros)
                )
            i = index[row["bucket"].astimezone(UTC)]
            line.requests[i] += row["requests"]
            line.tokens[i] += sum(
                row[f]
                for f in (
                    "input_tokens",
                    "cached_input_tokens",
                    "cache_write_tokens",
                    "output_tokens",
                    "reasoning_tokens",
                )
            )
            line.charge_nano[i] += row["charge_nano"]
        return UsageReport(
            tenant_id=tenant_id,
            since=start,
            until=end,
            granularity=granularity,
            group_by=group_by,
            totals=total.totals(platform),
            by_model=[
                ModelUsage(model=m, totals=s.totals(platform))
                for m, s in _sorted_by_charge(by_model.items())
            ],
            by_key=[
                KeyUsage(key_id=k, totals=s.totals(platform))
                for k, s in _sorted_by_charge(by_key.items())
            ],
            buckets=buckets,
            series=sorted(series.values(), key=lambda s: (-sum(s.charge_nano), s.name)),
        )

    async def overview(
        self, conn: Connection, *, since: datetime | None, until: datetime | None
    ) -> Overview:
        """Revenue, base cost and margin of a period, by model and by tenant (operators)."""
        start, end = _window(since, until, "day")
        rows = await repository.overview(conn, since=start, until=end)
        total = _Sum()
        by_model: dict[str, _Sum] = {}
        by_tenant: dict[UUID, _Sum] = {}
        names: dict[UUID, str | None] = {}
        for row in rows:
            total.add(row)
            by_model.setdefault(row["model"], _Sum()).add(row)
            by_tenant.setdefault(row["tenant_id"], _Sum()).add(row)
            names[row["tenant_id"]] = row["tenant_name"]
        return Overview(
            since=start,
            until=end,
            totals=total.totals(True),
            by_model=[
                ModelUsage(model=m, totals=s.totals(True))
                for m, s in _sorted_by_charge(by_model.items())
            ],
            by_tenant=[
                TenantOverview(tenant_id=t, tenant_name=names[t], totals=s.totals(True))
                for t, s in _sorted_by_charge(by_tenant.items())
            ],
        )


usage_service = UsageService()
