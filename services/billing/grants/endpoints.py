"""Operator endpoints: grant credits, adjust balances."""

from __future__ import annotations

from uuid import UUID

from litestar import post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from billing.accounts.service import require_tenant
from billing.grants.schemas import AdjustmentIn, AdjustmentOut, GrantIn, GrantOut
from billing.grants.service import grant_service
from billing.http_context import actor_of, connection
from tally.auth import Principal, require_platform_role

_OPERATOR = [require_platform_role("operator")]


@post("/v1/admin/tenants/{tenant_id:uuid}/grants", guards=_OPERATOR, tags=["admin"])
async def post_grant(
    tenant_id: FromPath[UUID],
    data: JSONBody[GrantIn],
    principal: NamedDependency[Principal],
    state: State,
) -> GrantOut:
    """Grant promotional or manual credits, optionally expiring."""
    async with connection(state) as conn:
        await require_tenant(conn, tenant_id)
        return await grant_service.grant(conn, tenant_id, data, actor_of(principal))


@post("/v1/admin/tenants/{tenant_id:uuid}/adjustments", guards=_OPERATOR, tags=["admin"])
async def post_adjustment(
    tenant_id: FromPath[UUID],
    data: JSONBody[AdjustmentIn],
    principal: NamedDependency[Principal],
    state: State,
) -> AdjustmentOut:
    """Correct a balance up or down; a reason is required."""
    async with connection(state) as conn:
        await require_tenant(conn, tenant_id)
        return await grant_service.adjust(conn, tenant_id, data, actor_of(principal))


ROUTES = [post_grant, post_adjustment]
