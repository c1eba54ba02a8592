"""Ledger API: one line per balance change, newest first, cursor-paginated."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from litestar import get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter

from billing.accounts.service import require_tenant
from billing.http_context import connection, parse_moment
from billing.ledger.schemas import LedgerPage
from billing.ledger.service import ledger_service
from tally.auth import Principal


@get("/v1/tenants/{tenant_id:uuid}/ledger", tags=["ledger"])
async def get_ledger(
    tenant_id: FromPath[UUID],
    principal: NamedDependency[Principal],
    state: State,
    cursor: Annotated[str | None, QueryParameter(max_length=200)] = None,
    limit: Annotated[int, QueryParameter(ge=1, le=500)] = 50,
    kind: Annotated[str | None, QueryParameter(description="comma-separated kinds")] = None,
    since: Annotated[str | None, QueryParameter(name="from", max_length=64)] = None,
    until: Annotated[str | None, QueryParameter(name="to", max_length=64)] = None,
) -> LedgerPage:
    """The tenant's ledger; filter by kind (`usage,grant`) and time (`from` ≤ t < `to`)."""
    principal.require_tenant(tenant_id)
    async with connection(state) as conn:
        await require_tenant(conn, tenant_id)
        return await ledger_service.page(
            conn,
            tenant_id,
            cursor=cursor,
            limit=limit,
            kinds=kind,
            since=parse_moment(since, "from"),
            until=parse_moment(until, "to"),
        )


ROUTES = [get_ledger]
