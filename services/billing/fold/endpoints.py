"""Operator reports of the fold: pricing mismatches and live-balance drift."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec
from litestar import get
from litestar.datastructures import State
from litestar.params import FromQuery, QueryParameter

from billing.fold import repository
from billing.fold.schemas import Drift, DriftPage, Mismatch, MismatchPage
from billing.http_context import connection
from tally.auth import require_platform_role

_READ = [require_platform_role("operator", "finance")]


@get("/v1/admin/pricing-mismatches", guards=_READ, tags=["admin"])
async def get_mismatches(
    state: State,
    tenant_id: FromQuery[UUID | None] = None,
    before: Annotated[int | None, QueryParameter(ge=1)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
) -> MismatchPage:
    """Usage whose recorded charge differs from the fold's recomputation, newest first."""
    async with connection(state) as conn:
        rows = await repository.list_mismatches(conn, tenant_id, before, limit + 1)
    data = [Mismatch(**dict(r)) for r in rows[:limit]]
    return MismatchPage(data=data, next_before=data[-1].position if len(rows) > limit else None)


@get("/v1/admin/live-balance-drift", guards=_READ, tags=["admin"])
async def get_drift(
    state: State,
    tenant_id: FromQuery[UUID | None] = None,
    before: Annotated[int | None, QueryParameter(ge=1)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 100,
) -> DriftPage:
    """Differences reconcile found between Redis and Postgres, and whether it repaired them."""
    async with connection(state) as conn:
        rows = await repository.list_drift(conn, tenant_id, before, limit + 1)
    data = [Drift(**{**dict(r), "detail": msgspec.json.decode(r["detail"])}) for r in rows[:limit]]
    return DriftPage(data=data, next_before=data[-1].id if len(rows) > limit else None)


ROUTES = [get_mismatches, get_drift]
