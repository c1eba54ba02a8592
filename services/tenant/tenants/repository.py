"""Every SQL statement on `tenants` and `tenant_margins`."""

# Statements splice in only the column lists below (module constants); every value is a bound
# parameter, so the f-strings cannot carry input into SQL.
# ruff: noqa: S608

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import asyncpg

from tally.db import Connection

_COLUMNS = """id, name, mode, status, billing_email, tax_id, address, country, margin_override_pct,
budget_cap_nano, rpm_limit, tpm_limit, suspended_reason, suspended_at, created_at, updated_at"""

INSERT_TENANT = f"""
INSERT INTO tenants (id, name, mode, billing_email, tax_id, address, country, budget_cap_nano,
                     rpm_limit, tpm_limit)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING {_COLUMNS}
"""

SELECT_TENANT = f"SELECT {_COLUMNS} FROM tenants WHERE id = $1"

# Updates lock the row first so two concurrent PATCHes produce two consistent before/after pairs.
SELECT_TENANT_FOR_UPDATE = f"SELECT {_COLUMNS} FROM tenants WHERE id = $1 FOR UPDATE"

SELECT_TENANT_BY_NAME = f"SELECT {_COLUMNS} FROM tenants WHERE lower(name) = lower($1)"

UPDATE_TENANT = f"""
UPDATE tenants
SET name = $2, mode = $3, billing_email = $4, tax_id = $5, address = $6, country = $7,
    margin_override_pct = $8, budget_cap_nano = $9, rpm_limit = $10, tpm_limit = $11,
    updated_at = now()
WHERE id = $1
RETURNING {_COLUMNS}
"""

SET_STATUS = f"""
UPDATE tenants
SET status = $2, suspended_reason = $3, suspended_at = CASE WHEN $2 = 'suspended' THEN now() END,
    updated_at = now()
WHERE id = $1
RETURNING {_COLUMNS}
"""

# Newest first; keyset on (created_at, id). `search` matches a name or billing email fragment
# (LIKE wildcards in it are escaped by the caller) or the tenant id itself.
LIST_TENANTS = f"""
SELECT {_COLUMNS} FROM tenants
WHERE ($1::text IS NULL OR name ILIKE $1 ESCAPE '\\' OR billing_email ILIKE $1 ESCAPE '\\'
       OR id::text = $2)
  AND ($3::text IS NULL OR status = $3)
  AND ($4::text IS NULL OR mode = $4)
  AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $7
"""

NEXT_PRICE_VERSION = "SELECT nextval('price_book_version_seq')"

INSERT_TENANT_MARGIN = """
INSERT INTO tenant_margins (tenant_id, price_version, margin_pct) VALUES ($1, $2, $3)
"""


async def insert_tenant(
    conn: Connection,
    *,
    tenant_id: UUID,
    name: str,
    mode: str,
    billing_email: str | None,
    tax_id: str | None,
    address: dict[str, Any] | None,
    country: str | None,
    budget_cap_nano: int | None,
    rpm_limit: int | None,
    tpm_limit: int | None,
) -> asyncpg.Record | None:
    """The new row, or None when the name is taken (case-insensitively)."""
    try:
        async with conn.transaction():  # a savepoint: the unique violation must not abort
            return await conn.fetchrow(
                INSERT_TENANT,
                tenant_id,
                name,
                mode,
                billing_email,
                tax_id,
                address,
                country,
                budget_cap_nano,
                rpm_limit,
                tpm_limit,
            )
    except asyncpg.UniqueViolationError:
        return None


async def fetch_tenant(conn: Connection, tenant_id: UUID, *, for_update: bool = False) -> Any:
    return await conn.fetchrow(SELECT_TENANT_FOR_UPDATE if for_update else SELECT_TENANT, tenant_id)


async def fetch_tenant_by_name(conn: Connection, name: str) -> Any:
    return await conn.fetchrow(SELECT_TENANT_BY_NAME, name)


async def update_tenant(
    conn: Connection, tenant_id: UUID, fields: dict[str, Any]
) -> asyncpg.Record | None:
    """Write every mutable field of `fields`; None when the new name is taken."""
    try:
        async with conn.transaction():
            return await conn.fetchrow(
                UPDATE_TENANT,
                tenant_id,
                fields["name"],
                fields["mode"],
                fields["billing_email"],
                fields["tax_id"],
                fields["address"],
                fields["country"],
                fields["margin_override_pct"],
                fields["budget_cap_nano"],
                fields["rpm_limit"],
                fields["tpm_limit"],
            )
    except asyncpg.UniqueViolationError:
        return None


async def set_status(
    conn: Connection, tenant_id: UUID, status: str, reason: str | None
) -> asyncpg.Record:
    row = await conn.fetchrow(SET_STATUS, tenant_id, status, reason)
    assert row is not None
    return row


async def list_tenants(
    conn: Connection,
    *,
    like: str | None,
    exact_id: str | None,
    status: str | None,
    mode: str | None,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        LIST_TENANTS,
        like,
        exact_id,
        status,
        mode,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def record_margin_override(
    conn: Connection, tenant_id: UUID, margin_pct: Decimal | None
) -> int:
    """Take the next price-book version and record the tenant's margin from it on."""
    version: int = await conn.fetchval(NEXT_PRICE_VERSION)
    await conn.execute(INSERT_TENANT_MARGIN, tenant_id, version, margin_pct)
    return version
