"""Every SQL statement on refresh_tokens."""

# Constants named after token columns are SQL, not secrets.
# ruff: noqa: S105

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from tally.db import Connection

INSERT_REFRESH_TOKEN = """
INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at)
VALUES ($1, $2, $3, $4, $5)
"""
# Locked, so two concurrent uses of one token are serialised and the second sees it rotated.
SELECT_REFRESH_TOKEN_FOR_UPDATE = """
SELECT id, user_id, family_id, expires_at, rotated_at, revoked_at
FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE
"""
MARK_ROTATED = "UPDATE refresh_tokens SET rotated_at = now() WHERE id = $1"
REVOKE_FAMILY = """
UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL
"""
REVOKE_ALL_OF_USER = """
UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL
"""


async def insert_refresh_token(
    conn: Connection,
    *,
    token_id: UUID,
    user_id: UUID,
    family_id: UUID,
    token_hash: bytes,
    expires_at: datetime,
) -> None:
    await conn.execute(INSERT_REFRESH_TOKEN, token_id, user_id, family_id, token_hash, expires_at)


async def refresh_token_by_hash(conn: Connection, token_hash: bytes) -> Any:
    return await conn.fetchrow(SELECT_REFRESH_TOKEN_FOR_UPDATE, token_hash)


async def mark_rotated(conn: Connection, token_id: UUID) -> None:
    await conn.execute(MARK_ROTATED, token_id)


async def revoke_family(conn: Connection, family_id: UUID) -> None:
    await conn.execute(REVOKE_FAMILY, family_id)


async def revoke_all_of_user(conn: Connection, user_id: UUID) -> None:
    await conn.execute(REVOKE_ALL_OF_USER, user_id)
