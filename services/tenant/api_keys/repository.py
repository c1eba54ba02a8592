"""Every SQL statement on api_keys; each takes the tenant id, so keys never cross tenants."""

# Statements splice in only the column lists below (module constants); every value is a bound
# parameter, so the f-strings cannot carry input into SQL.
# ruff: noqa: S608

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from tally.db import Connection

_COLUMNS = """id, tenant_id, name, prefix, status, expires_at, allowed_models, rpm_limit,
tpm_limit, spend_cap_nano, created_at, updated_at, revoked_at, replaced_by"""

INSERT_KEY = f"""
INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, expires_at, allowed_models,
                      rpm_limit, tpm_limit, spend_cap_nano)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
RETURNING {_COLUMNS}
"""
SELECT_KEY = f"SELECT {_COLUMNS} FROM api_keys WHERE tenant_id = $1 AND id = $2"
SELECT_KEY_FOR_UPDATE = SELECT_KEY + " FOR UPDATE"
# Only for operators who name a key by its id alone (the CLI): which tenant holds it.
SELECT_TENANT_OF_KEY = "SELECT tenant_id FROM api_keys WHERE id = $1"
UPDATE_KEY = f"""
UPDATE api_keys
SET name = $3, expires_at = $4, allowed_models = $5, rpm_limit = $6, tpm_limit = $7,
    spend_cap_nano = $8, updated_at = now()
WHERE tenant_id = $1 AND id = $2
RETURNING {_COLUMNS}
"""
REVOKE_KEY = f"""
UPDATE api_keys SET status = 'revoked', revoked_at = now(), updated_at = now(),
                    replaced_by = coalesce($3, replaced_by)
WHERE tenant_id = $1 AND id = $2
RETURNING {_COLUMNS}
"""
RETIRE_KEY_AT = f"""
UPDATE api_keys SET expires_at = $3, replaced_by = $4, updated_at = now()
WHERE tenant_id = $1 AND id = $2
RETURNING {_COLUMNS}
"""
LIST_KEYS = f"""
SELECT {_COLUMNS} FROM api_keys
WHERE tenant_id = $1
  AND ($2 OR status = 'active')
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $5
"""
# Key creation reads the tenant under a share lock: a concurrent suspension waits for it (and
# then publishes its own invalidation), so no key is born active in a suspended tenant.
SELECT_TENANT_STATUS = "SELECT status FROM tenants WHERE id = $1 FOR SHARE"


async def tenant_status(conn: Connection, tenant_id: UUID) -> str | None:
    status: str | None = await conn.fetchval(SELECT_TENANT_STATUS, tenant_id)
    return status


async def insert_key(
    conn: Connection,
    *,
    key_id: UUID,
    tenant_id: UUID,
    name: str,
    prefix: str,
    key_hash: bytes,
    expires_at: datetime | None,
    allowed_models: list[str] | None,
    rpm_limit: int | None,
    tpm_limit: int | None,
    spend_cap_nano: int | None,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        INSERT_KEY,
        key_id,
        tenant_id,
        name,
        prefix,
        key_hash,
        expires_at,
        allowed_models,
        rpm_limit,
        tpm_limit,
        spend_cap_nano,
    )
    assert row is not None
    return row


async def fetch_key(
    conn: Connection, tenant_id: UUID, key_id: UUID, *, for_update: bool = False
) -> Any:
    return await conn.fetchrow(
        SELECT_KEY_FOR_UPDATE if for_update else SELECT_KEY, tenant_id, key_id
    )


async def tenant_of_key(conn: Connection, key_id: UUID) -> UUID | None:
    tenant_id: UUID | None = await conn.fetchval(SELECT_TENANT_OF_KEY, key_id)
    return tenant_id


async def update_key(
    conn: Connection, tenant_id: UUID, key_id: UUID, fields: dict[str, Any]
) -> asyncpg.Record:
    row = await conn.fetchrow(
        UPDATE_KEY,
        tenant_id,
        key_id,
        fields["name"],
        fields["expires_at"],
        fields["allowed_models"],
        fields["rpm_limit"],
        fields["tpm_limit"],
        fields["spend_cap_nano"],
    )
    assert row is not None
    return row


async def revoke_key(
    conn: Connection, tenant_id: UUID, key_id: UUID, *, replaced_by: UUID | None = None
) -> asyncpg.Record:
    row = await conn.fetchrow(REVOKE_KEY, tenant_id, key_id, replaced_by)
    assert row is not None
    return row


async def retire_key_at(
    conn: Connection, tenant_id: UUID, key_id: UUID, expires_at: datetime, replaced_by: UUID
) -> asyncpg.Record:
    row = await conn.fetchrow(RETIRE_KEY_AT, tenant_id, key_id, expires_at, replaced_by)
    assert row is not None
    return row


async def list_keys(
    conn: Connection,
    tenant_id: UUID,
    *,
    include_revoked: bool,
    after: tuple[datetime, UUID] | None,
    limit: int,
) -> list[asyncpg.Record]:
    return await conn.fetch(
        LIST_KEYS,
        tenant_id,
        include_revoked,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
