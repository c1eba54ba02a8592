"""Tenants as billing sees them: read from the tenant service's `tenants` projection."""

from __future__ import annotations

from uuid import UUID

import asyncpg

from tally.db import Connection

_BY_ID = "SELECT id, name, mode, status FROM tenants WHERE id = $1"
_BY_NAME = "SELECT id, name, mode, status FROM tenants WHERE lower(name) = lower($1)"


async def tenant_by_id(conn: Connection, tenant_id: UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(_BY_ID, tenant_id)


async def tenant_by_name(conn: Connection, name: str) -> asyncpg.Record | None:
    return await conn.fetchrow(_BY_NAME, name)
