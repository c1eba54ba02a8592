"""HTTP routes of the audit log: the whole platform's, and one tenant's."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from litestar import get
from litestar.params import FromPath, FromQuery, QueryParameter

from tally.auth import require_platform_role
from tenant.audit.schemas import AuditPage, AuditQuery
from tenant.audit.service import audit_service
from tenant.pagination import DEFAULT_LIMIT
from tenant.params import Caller, Cursor, Limit, Services

Types = Annotated[list[str] | None, QueryParameter(name="type", max_items=50)]
ActorId = Annotated[str | None, QueryParameter(max_length=200)]
ActorKind = Literal["user", "cli", "system"]


@get(
    "/v1/audit-events",
    guards=[require_platform_role("operator", "finance")],
    tags=["audit"],
)
async def list_audit_events(
    runtime: Services,
    tenant_id: FromQuery[UUID | None] = None,
    types: Types = None,
    actor_id: ActorId = None,
    actor_kind: FromQuery[ActorKind | None] = None,
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> AuditPage:
    """Every admin action on the platform, newest first (the usage stream is not included).
    Filters: `tenant_id`, `type` (repeatable), `actor_id`, `actor_kind`, `since` (inclusive),
    `until` (exclusive)."""
    query = AuditQuery(
        tenant_id=tenant_id,
        types=types,
        actor_id=actor_id,
        actor_kind=actor_kind,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    async with runtime.pool.acquire() as conn:
        return await audit_service.list_events(conn, query)


@get("/v1/tenants/{tenant_id:uuid}/audit-events", tags=["audit"])
async def list_tenant_audit_events(
    tenant_id: FromPath[UUID],
    principal: Caller,
    runtime: Services,
    types: Types = None,
    actor_id: ActorId = None,
    actor_kind: FromQuery[ActorKind | None] = None,
    since: FromQuery[datetime | None] = None,
    until: FromQuery[datetime | None] = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> AuditPage:
    """The tenant's own audit log (owners, admins, operators, finance)."""
    if not principal.has_platform_role("finance"):
        principal.require_tenant(tenant_id, "admin")
    query = AuditQuery(
        tenant_id=tenant_id,
        types=types,
        actor_id=actor_id,
        actor_kind=actor_kind,
        since=since,
        until=until,
        cursor=cursor,
        limit=limit,
    )
    async with runtime.pool.acquire() as conn:
        return await audit_service.list_events(conn, query)


ROUTES = [list_audit_events, list_tenant_audit_events]
