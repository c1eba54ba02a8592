"""HTTP routes of tenants: thin handlers over `tenant_service`."""

from __future__ import annotations

from uuid import UUID

from litestar import get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody

from tally.auth import require_platform_role
from tenant.pagination import DEFAULT_LIMIT
from tenant.params import Caller, Cursor, Limit, Search, Services
from tenant.tenants.schemas import (
    Tenant,
    TenantCreate,
    TenantMode,
    TenantPage,
    TenantQuery,
    TenantStatus,
    TenantSuspend,
    TenantUpdate,
)
from tenant.tenants.service import tenant_service

_operator = [require_platform_role("operator")]


@post("/v1/tenants", guards=_operator, status_code=201, tags=["tenants"])
async def create_tenant(
    data: JSONBody[TenantCreate], principal: Caller, runtime: Services
) -> Tenant:
    """Create a tenant (operators). Starter credits from settings and `credits` are granted."""
    async with runtime.unit(principal) as uow:
        return await tenant_service.create(uow, data, runtime.settings)


@get("/v1/tenants", guards=[require_platform_role("operator", "finance")], tags=["tenants"])
async def list_tenants(
    runtime: Services,
    search: Search = None,
    status: FromQuery[TenantStatus | None] = None,
    mode: FromQuery[TenantMode | None] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> TenantPage:
    """Tenants newest first; `search` matches a name or billing-email fragment, or an id."""
    async with runtime.pool.acquire() as conn:
        return await tenant_service.list_tenants(
            conn, TenantQuery(search=search, status=status, mode=mode, limit=limit, cursor=cursor)
        )


@get("/v1/tenants/{tenant_id:uuid}", tags=["tenants"])
async def get_tenant(tenant_id: FromPath[UUID], principal: Caller, runtime: Services) -> Tenant:
    """One tenant: its members, operators and finance."""
    principal.require_tenant(tenant_id)
    async with runtime.pool.acquire() as conn:
        return await tenant_service.get(conn, tenant_id)


@patch("/v1/tenants/{tenant_id:uuid}", tags=["tenants"])
async def update_tenant(
    tenant_id: FromPath[UUID], data: JSONBody[TenantUpdate], principal: Caller, runtime: Services
) -> Tenant:
    """Change a tenant. Owners and admins may change the billing profile; the rest is for
    operators (name, mode, margin override, budget cap)."""
    principal.require_tenant(tenant_id, "admin")
    async with runtime.unit(principal) as uow:
        return await tenant_service.update(
            uow, tenant_id, data, as_operator=principal.has_platform_role("operator")
        )


@post("/v1/tenants/{tenant_id:uuid}/suspend", guards=_operator, status_code=200, tags=["tenants"])
async def suspend_tenant(
    tenant_id: FromPath[UUID],
    principal: Caller,
    runtime: Services,
    data: JSONBody[TenantSuspend | None] = None,
) -> Tenant:
    """Suspend a tenant: its API keys stop working until it is reactivated."""
    reason = (data or TenantSuspend()).reason
    async with runtime.unit(principal) as uow:
        return await tenant_service.suspend(uow, tenant_id, reason)


@post(
    "/v1/tenants/{tenant_id:uuid}/reactivate",
    guards=_operator,
    status_code=200,
    tags=["tenants"],
)
async def reactivate_tenant(
    tenant_id: FromPath[UUID], principal: Caller, runtime: Services
) -> Tenant:
    """Reactivate a suspended tenant."""
    async with runtime.unit(principal) as uow:
        return await tenant_service.reactivate(uow, tenant_id)


ROUTES = [
    create_tenant,
    list_tenants,
    get_tenant,
    update_tenant,
    suspend_tenant,
    reactivate_tenant,
]
