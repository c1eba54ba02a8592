"""Usage analytics (tenant-scoped) and the operators' revenue overview."""

from __future__ import annotations

from typing import Annotated, Literal
from uuid import UUID

from litestar import get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter

from billing.accounts.service import require_tenant
from billing.http_context import connection, is_platform, parse_moment
from billing.usage.schemas import Overview, UsageReport
from billing.usage.service import usage_service
from tally.auth import Principal, require_platform_role


@get("/v1/tenants/{tenant_id:uuid}/usage", tags=["usage"])
async def get_usage(
    tenant_id: FromPath[UUID],
    principal: NamedDependency[Principal],
    state: State,
    since: Annotated[str | None, QueryParameter(name="from", max_length=64)] = None,
    until: Annotated[str | None, QueryParameter(name="to", max_length=64)] = None,
    granularity: FromQuery[Literal["hour", "day"]] = "day",
    group_by: FromQuery[Literal["model", "key", "none"]] = "model",
    model: Annotated[str | None, QueryParameter(max_length=200)] = None,
    key_id: FromQuery[UUID | None] = None,
) -> UsageReport:
    """Totals, by model and key, and time series for charts (default: the last 30 days)."""
    principal.require_tenant(tenant_id)
    async with connection(state) as conn:
        await require_tenant(conn, tenant_id)
        return await usage_service.report(
            conn,
            tenant_id,
            since=parse_moment(since, "from"),
            until=parse_moment(until, "to"),
            granularity=granularity,
            group_by=group_by,
            model=model,
            key_id=key_id,
            platform=is_platform(principal),
        )


@get(
    "/v1/admin/overview",
    guards=[require_platform_role("operator", "finance")],
    tags=["admin"],
)
async def get_overview(
    state: State,
    since: Annotated[str | None, QueryParameter(name="from", max_length=64)] = None,
    until: Annotated[str | None, QueryParameter(name="to", max_length=64)] = None,
) -> Overview:
    """Revenue (charges), base cost and margin by model and tenant for a period."""
    async with connection(state) as conn:
        return await usage_service.overview(
            conn, since=parse_moment(since, "from"), until=parse_moment(until, "to")
        )


ROUTES = [get_usage, get_overview]
