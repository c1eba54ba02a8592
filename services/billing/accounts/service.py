"""Finding the tenant a request or command is about."""

from __future__ import annotations

from uuid import UUID

import msgspec

from billing.accounts import repository
from billing.errors import UnknownTenant
from tally.db import Connection


class TenantRef(msgspec.Struct, frozen=True):
    id: UUID
    name: str
    mode: str
    status: str


async def resolve_tenant(conn: Connection, id_or_name: str) -> TenantRef:
    """A tenant by id, or by name (case-insensitive), as the CLI accepts it."""
    row = None
    try:
        tenant_id = UUID(id_or_name)
    except ValueError:
        row = await repository.tenant_by_name(conn, id_or_name.strip())
    else:
        row = await repository.tenant_by_id(conn, tenant_id)
        if row is None:
            row = await repository.tenant_by_name(conn, id_or_name.strip())
    if row is None:
        raise UnknownTenant(f"no tenant with id or name {id_or_name!r}", param="tenant")
    return TenantRef(row["id"], row["name"], row["mode"], row["status"])


async def require_tenant(conn: Connection, tenant_id: UUID) -> TenantRef:
    """The tenant, or 404 (after access was checked, so existence does not leak)."""
    row = await repository.tenant_by_id(conn, tenant_id)
    if row is None:
        raise UnknownTenant("tenant not found", param="tenant_id")
    return TenantRef(row["id"], row["name"], row["mode"], row["status"])
