"""Low-balance alert configuration and the tenant's notifications."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import delete, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, Parameter

from billing.accounts.service import require_tenant
from billing.alerts.schemas import LowBalanceAlertIn, LowBalanceAlertOut, NotificationPage
from billing.alerts.service import alert_service
from billing.http_context import connection
from tally.auth import Principal

_PATH = "/v1/tenants/{tenant_id:uuid}/alerts/low-balance"


@put(_PATH, tags=["alerts"])
async def put_low_balance_alert(
    tenant_id: FromPath[UUID],
    data: JSONBody[LowBalanceAlertIn],
    principal: NamedDependency[Principal],
    state: State,
) -> LowBalanceAlertOut:
    """Set the threshold and webhook URL (tenant admins); the first answer carries the secret."""
    principal.require_tenant(tenant_id, "admin")
    async with connection(state) as conn:
        await require_tenant(conn, tenant_id)
        return await alert_service.configure(conn, state.settings, tenant_id, data)


@get(_PATH, tags=["alerts"])
async def get_low_balance_alert(
    tenant_id: FromPath[UUID], principal: NamedDependency[Principal], state: State
) -> LowBalanceAlertOut:
    principal.require_tenant(tenant_id)
    async with connection(state) as conn:
        await require_tenant(conn, tenant_id)
        return await alert_service.get(conn, tenant_id)


@delete(_PATH, tags=["alerts"])
async def delete_low_balance_alert(
    tenant_id: FromPath[UUID], principal: NamedDependency[Principal], state: State
) -> None:
    principal.require_tenant(tenant_id, "admin")
    async with connection(state) as conn:
        await require_tenant(conn, tenant_id)
        await alert_service.remove(conn, tenant_id)


@get("/v1/tenants/{tenant_id:uuid}/notifications", tags=["alerts"])
async def get_notifications(
    tenant_id: FromPath[UUID],
    principal: NamedDependency[Principal],
    state: State,
    cursor: Annotated[str | None, Parameter(max_length=300)] = None,
    limit: Annotated[int, Parameter(ge=1, le=200)] = 50,
) -> NotificationPage:
    """Webhooks sent (or being retried) for the tenant, newest first."""
    principal.require_tenant(tenant_id)
    async with connection(state) as conn:
        await require_tenant(conn, tenant_id)
        return await alert_service.notifications(conn, tenant_id, cursor=cursor, limit=limit)


ROUTES = [put_low_balance_alert, get_low_balance_alert, delete_low_balance_alert, get_notifications]
