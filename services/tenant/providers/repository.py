"""Every SQL statement on provider_credentials. Ciphertexts leave this module only to be
opened by the key ring; nothing else reads them."""

# Statements splice in only the column lists below (module constants); every value is a bound
# parameter, so the f-strings cannot carry input into SQL.
# Constants named after secret columns are SQL, not secrets.
# ruff: noqa: S608, S105

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from tally.db import Connection

_COLUMNS = """id, kind, name, base_url, options, weight, enabled, disabled_reason, last4,
secret_key_id, created_at, updated_at"""
_SECRET_COLUMNS = _COLUMNS + ", secret_ciphertext"

INSERT_CREDENTIAL = f"""
INSERT INTO provider_credentials (id, kind, name, base_url, options, weight, secret_ciphertext,
                                  secret_key_id, last4)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
RETURNING {_COLUMNS}
"""
SELECT_CREDENTIAL = f"SELECT {_COLUMNS} FROM provider_credentials WHERE id = $1"
SELECT_CREDENTIAL_FOR_UPDATE = (
    f"SELECT {_SECRET_COLUMNS} FROM provider_credentials WHERE id = $1 FOR UPDATE"
)
SELECT_CREDENTIAL_WITH_SECRET = f"SELECT {_SECRET_COLUMNS} FROM provider_credentials WHERE id = $1"
SELECT_CREDENTIAL_BY_NAME = f"SELECT {_COLUMNS} FROM provider_credentials WHERE name = $1"
SELECT_NAMES_LIKE = "SELECT name FROM provider_credentials WHERE name = $1 OR name LIKE $1 || '-%'"
LIST_CREDENTIALS = f"""
SELECT {_COLUMNS} FROM provider_credentials
WHERE ($1::text IS NULL OR kind = $1) AND ($2 OR enabled)
ORDER BY kind, name
"""
UPDATE_CREDENTIAL = f"""
UPDATE provider_credentials
SET name = $2, base_url = $3, options = $4, weight = $5, updated_at = now()
WHERE id = $1
RETURNING {_COLUMNS}
"""
UPDATE_SECRET = """
UPDATE provider_credentials
SET secret_ciphertext = $2, secret_key_id = $3, last4 = $4, updated_at = now()
WHERE id = $1
"""
SET_ENABLED = f"""
UPDATE provider_credentials SET enabled = $2, disabled_reason = $3, updated_at = now()
WHERE id = $1
RETURNING {_COLUMNS}
"""
# Every sealed secret, locked: `tally secrets rotate` re-seals them in one transaction.
SELECT_ALL_SECRETS_FOR_UPDATE = """
SELECT id, secret_ciphertext, secret_key_id FROM provider_credentials ORDER BY id FOR UPDATE
"""
RESEAL_SECRET = """
UPDATE provider_credentials SET secret_ciphertext = $2, secret_key_id = $3 WHERE id = $1
"""


async def insert_credential(
    conn: Connection,
    *,
    credential_id: UUID,
    kind: str,
    name: str,
    base_url: str | None,
    options: dict[str, str],
    weight: int,
    ciphertext: bytes,
    key_id: str,
    last4: str,
) -> asyncpg.Record | None:
    """The new row, or None when the name is taken."""
    try:
        async with conn.transaction():  # a savepoint: the unique violation must not abort
            return await conn.fetchrow(
                INSERT_CREDENTIAL,
                credential_id,
                kind,
                name,
                base_url,
                options,
                weight,
                ciphertext,
                key_id,
                last4,
            )
    except asyncpg.UniqueViolationError:
        return None


async def fetch_credential(conn: Connection, credential_id: UUID) -> Any:
    return await conn.fetchrow(SELECT_CREDENTIAL, credential_id)


async def fetch_credential_for_update(conn: Connection, credential_id: UUID) -> Any:
    return await conn.fetchrow(SELECT_CREDENTIAL_FOR_UPDATE, credential_id)


async def fetch_credential_with_secret(conn: Connection, credential_id: UUID) -> Any:
    return await conn.fetchrow(SELECT_CREDENTIAL_WITH_SECRET, credential_id)


async def fetch_credential_by_name(conn: Connection, name: str) -> Any:
    return await conn.fetchrow(SELECT_CREDENTIAL_BY_NAME, name)


async def names_starting_with(conn: Connection, base: str) -> set[str]:
    return {r["name"] for r in await conn.fetch(SELECT_NAMES_LIKE, base)}


async def list_credentials(
    conn: Connection, *, kind: str | None, include_disabled: bool
) -> list[asyncpg.Record]:
    return await conn.fetch(LIST_CREDENTIALS, kind, include_disabled)


async def update_credential(
    conn: Connection, credential_id: UUID, fields: dict[str, Any]
) -> asyncpg.Record | None:
    """The updated row, or None when the new name is taken."""
    try:
        async with conn.transaction():
            return await conn.fetchrow(
                UPDATE_CREDENTIAL,
                credential_id,
                fields["name"],
                fields["base_url"],
                fields["options"],
                fields["weight"],
            )
    except asyncpg.UniqueViolationError:
        return None


async def update_secret(
    conn: Connection, credential_id: UUID, ciphertext: bytes, key_id: str, last4: str
) -> None:
    await conn.execute(UPDATE_SECRET, credential_id, ciphertext, key_id, last4)


async def set_enabled(
    conn: Connection, credential_id: UUID, enabled: bool, reason: str | None
) -> asyncpg.Record:
    row = await conn.fetchrow(SET_ENABLED, credential_id, enabled, reason)
    assert row is not None
    return row


async def all_secrets_for_update(conn: Connection) -> list[asyncpg.Record]:
    return await conn.fetch(SELECT_ALL_SECRETS_FOR_UPDATE)


async def reseal_secret(
    conn: Connection, credential_id: UUID, ciphertext: bytes, key_id: str
) -> None:
    await conn.execute(RESEAL_SECRET, credential_id, ciphertext, key_id)
