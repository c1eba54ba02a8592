"""Balance API: tenant-scoped (members of the tenant, operators, finance)."""

from __future__ import annotations

from uuid import UUID

from litestar import get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath

from billing.accounts.service import require_tenant
from billing.balances.schemas import BalanceOut
from billing.balances.service import balance_service
from billing.http_context import connection, live_balances
from tally.auth import Principal


@get("/v1/tenants/{tenant_id:uuid}/balance", tags=["balances"])
async def get_balance(
    tenant_id: FromPath[UUID], principal: NamedDependency[Principal], state: State
) -> BalanceOut:
    """Balance, open holds and what is available to spend now."""
    principal.require_tenant(tenant_id)
    async with connection(state) as conn:
        await require_tenant(conn, tenant_id)
        return await balance_service.balance(
            conn, live_balances(state), tenant_id, fold_shards=state.settings.fold_shards
        )


ROUTES = [get_balance]
