"""Every SQL statement on users, tenant_memberships and invitations."""

# Statements splice in only the column lists below (module constants); every value is a bound
# parameter, so the f-strings cannot carry input into SQL.
# Constants named after secret columns are SQL, not secrets.
# ruff: noqa: S608, S105

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from tally.db import Connection

_USER_COLUMNS = """id, email, password_hash, platform_roles, status, oidc_issuer, oidc_subject,
created_at, updated_at"""

INSERT_USER = f"""
INSERT INTO users (id, email, password_hash, platform_roles, oidc_issuer, oidc_subject)
VALUES ($1, lower($2), $3, $4, $5, $6)
RETURNING {_USER_COLUMNS}
"""
SELECT_USER = f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1"
SELECT_USER_FOR_UPDATE = f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE"
SELECT_USER_BY_EMAIL = f"SELECT {_USER_COLUMNS} FROM users WHERE lower(email) = lower($1)"
SELECT_USER_BY_EMAIL_FOR_UPDATE = SELECT_USER_BY_EMAIL + " FOR UPDATE"
SELECT_USER_BY_OIDC = f"""
SELECT {_USER_COLUMNS} FROM users WHERE oidc_issuer = $1 AND oidc_subject = $2
"""
UPDATE_USER_ACCESS = f"""
UPDATE users SET platform_roles = $2, status = $3, updated_at = now() WHERE id = $1
RETURNING {_USER_COLUMNS}
"""
# Locks every active operator, so two concurrent demotions cannot both leave "one more".
ACTIVE_OPERATORS_FOR_UPDATE = """
SELECT id FROM users WHERE 'operator' = ANY(platform_roles) AND status = 'active' FOR UPDATE
"""
SET_PASSWORD_HASH = "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1"
LINK_OIDC = f"""
UPDATE users SET oidc_issuer = $2, oidc_subject = $3, updated_at = now() WHERE id = $1
RETURNING {_USER_COLUMNS}
"""
LIST_USERS = f"""
SELECT {_USER_COLUMNS} FROM users
WHERE ($1::text IS NULL OR email ILIKE $1 ESCAPE '\\')
  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4
"""

SELECT_ACCESS_OF_USER = """
SELECT m.tenant_id, t.name AS tenant_name, m.role
FROM tenant_memberships m JOIN tenants t ON t.id = m.tenant_id
WHERE m.user_id = $1
ORDER BY t.name
"""
SELECT_MEMBERSHIP_FOR_UPDATE = """
SELECT role FROM tenant_memberships WHERE tenant_id = $1 AND user_id = $2 FOR UPDATE
"""
UPSERT_MEMBERSHIP = """
INSERT INTO tenant_memberships (tenant_id, user_id, role) VALUES ($1, $2, $3)
ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = EXCLUDED.role, updated_at = now()
"""
DELETE_MEMBERSHIP = "DELETE FROM tenant_memberships WHERE tenant_id = $1 AND user_id = $2"
COUNT_OWNERS = """
SELECT count(*) FROM tenant_memberships WHERE tenant_id = $1 AND role = 'owner'
"""
# Serialises membership changes of one tenant, so two admins demoting the last two owners at
# the same time cannot both pass the "one owner is left" check.
LOCK_TENANT = "SELECT id FROM tenants WHERE id = $1 FOR UPDATE"
LIST_MEMBERS = """
SELECT m.tenant_id, m.user_id, u.email, m.role, m.created_at
FROM tenant_memberships m JOIN users u ON u.id = m.user_id
WHERE m.tenant_id = $1
  AND ($2::timestamptz IS NULL OR (m.created_at, m.user_id) > ($2, $3::uuid))
ORDER BY m.created_at, m.user_id
LIMIT $4
"""

SELECT_MEMBER = """
SELECT m.tenant_id, m.user_id, u.email, m.role, m.created_at
FROM tenant_memberships m JOIN users u ON u.id = m.user_id
WHERE m.tenant_id = $1 AND m.user_id = $2
"""

_INVITATION_COLUMNS = """id, tenant_id, email, role, status, expires_at, created_at,
accepted_at"""
INSERT_INVITATION = f"""
INSERT INTO invitations (id, tenant_id, email, role, token_hash, invited_by, expires_at)
VALUES ($1, $2, lower($3), $4, $5, $6, $7)
RETURNING {_INVITATION_COLUMNS}
"""
SELECT_INVITATION_BY_TOKEN_FOR_UPDATE = f"""
SELECT {_INVITATION_COLUMNS} FROM invitations WHERE token_hash = $1 FOR UPDATE
"""
SELECT_TENANT_INVITATION_FOR_UPDATE = f"""
SELECT {_INVITATION_COLUMNS} FROM invitations WHERE id = $1 AND tenant_id = $2 FOR UPDATE
"""
SELECT_PENDING_INVITATIONS_BY_EMAIL = f"""
SELECT {_INVITATION_COLUMNS} FROM invitations
WHERE lower(email) = lower($1) AND status = 'pending' AND expires_at > now()
ORDER BY created_at
FOR UPDATE
"""
MARK_INVITATION_ACCEPTED = """
UPDATE invitations SET status = 'accepted', accepted_by = $2, accepted_at = now() WHERE id = $1
"""
MARK_INVITATION_REVOKED = """
UPDATE invitations SET status = 'revoked', revoked_at = now() WHERE id = $1
"""
LIST_TENANT_INVITATIONS = f"""
SELECT {_INVITATION_COLUMNS} FROM invitations
WHERE tenant_id = $1
  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4
"""


async def insert_user(
    conn: Connection,
    *,
    user_id: UUID,
    email: str,
    password_hash: str | None,
    platform_roles: list[str],
    oidc: tuple[str, str] | None = None,
) -> asyncpg.Record | None:
    """The new row, or None when the email has an account already."""
    try:
        async with conn.transaction():  # a savepoint: the unique violation must not abort
            return await conn.fetchrow(
                INSERT_USER,
                user_id,
                email,
                password_hash,
                platform_roles,
                oidc[0] if oidc else None,
                oidc[1] if oidc else None,
            )
    except asyncpg.UniqueViolationError:
        return None


async def fetch_user(conn: Connection, user_id: UUID, *, for_update: bool = False) -> Any:
    return await conn.fetchrow(SELECT_USER_FOR_UPDATE if for_update else SELECT_USER, user_id)


async def fetch_user_by_email(conn: Connection, email: str, *, for_update: bool = False) -> Any:
    return await conn.fetchrow(
        SELECT_USER_BY_EMAIL_FOR_UPDATE if for_update else SELECT_USER_BY_EMAIL, email
    )


async def fetch_user_by_oidc(conn: Connection, issuer: str, subject: str) -> Any:
    return await conn.fetchrow(SELECT_USER_BY_OIDC, issuer, subject)


async def update_user_access(
    conn: Connection, user_id: UUID, platform_roles: list[str], status: str
) -> asyncpg.Record:
    row = await conn.fetchrow(UPDATE_USER_ACCESS, user_id, platform_roles, status)
    assert row is not None
    return row


async def active_operators(conn: Connection) -> set[UUID]:
    return {r["id"] for r in await conn.fetch(ACTIVE_OPERATORS_FOR_UPDATE)}


async def set_password_hash(conn: Connection, user_id: UUID, password_hash: str) -> None:
    await conn.execute(SET_PASSWORD_HASH, user_id, password_hash)


async def link_oidc(
    conn: Connection, user_id: UUID, issuer: str, subject: str
) -> asyncpg.Record | None:
    """Link an SSO identity; None when that identity is linked to another account."""
    try:
        async with conn.transaction():
            return await conn.fetchrow(LINK_OIDC, user_id, issuer, subject)
    except asyncpg.UniqueViolationError:
        return None


async def list_users(
    conn: Connection, *, like: str | None, after: tuple[datetime, UUID] | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        LIST_USERS, like, after[0] if after else None, after[1] if after else None, limit
    )


async def access_of_user(conn: Connection, user_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(SELECT_ACCESS_OF_USER, user_id)


async def lock_tenant(conn: Connection, tenant_id: UUID) -> bool:
    """Lock the tenant's row for this transaction; False if there is no such tenant."""
    return await conn.fetchval(LOCK_TENANT, tenant_id) is not None


async def membership_role(conn: Connection, tenant_id: UUID, user_id: UUID) -> str | None:
    role: str | None = await conn.fetchval(SELECT_MEMBERSHIP_FOR_UPDATE, tenant_id, user_id)
    return role


async def upsert_membership(conn: Connection, tenant_id: UUID, user_id: UUID, role: str) -> None:
    await conn.execute(UPSERT_MEMBERSHIP, tenant_id, user_id, role)


async def delete_membership(conn: Connection, tenant_id: UUID, user_id: UUID) -> None:
    await conn.execute(DELETE_MEMBERSHIP, tenant_id, user_id)


async def count_owners(conn: Connection, tenant_id: UUID) -> int:
    count: int = await conn.fetchval(COUNT_OWNERS, tenant_id)
    return count


async def list_members(
    conn: Connection, tenant_id: UUID, *, after: tuple[datetime, UUID] | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        LIST_MEMBERS, tenant_id, after[0] if after else None, after[1] if after else None, limit
    )


async def fetch_member(conn: Connection, tenant_id: UUID, user_id: UUID) -> Any:
    return await conn.fetchrow(SELECT_MEMBER, tenant_id, user_id)


async def insert_invitation(
    conn: Connection,
    *,
    invitation_id: UUID,
    tenant_id: UUID | None,
    email: str,
    role: str,
    token_hash: bytes,
    invited_by: str | None,
    expires_at: datetime,
) -> asyncpg.Record:
    row = await conn.fetchrow(
        INSERT_INVITATION,
        invitation_id,
        tenant_id,
        email,
        role,
        token_hash,
        invited_by,
        expires_at,
    )
    assert row is not None
    return row


async def invitation_by_token(conn: Connection, token_hash: bytes) -> Any:
    return await conn.fetchrow(SELECT_INVITATION_BY_TOKEN_FOR_UPDATE, token_hash)


async def tenant_invitation(conn: Connection, tenant_id: UUID, invitation_id: UUID) -> Any:
    return await conn.fetchrow(SELECT_TENANT_INVITATION_FOR_UPDATE, invitation_id, tenant_id)


async def pending_invitations_for(conn: Connection, email: str) -> list[asyncpg.Record]:
    return await conn.fetch(SELECT_PENDING_INVITATIONS_BY_EMAIL, email)


async def mark_invitation_accepted(conn: Connection, invitation_id: UUID, user_id: UUID) -> None:
    await conn.execute(MARK_INVITATION_ACCEPTED, invitation_id, user_id)


async def mark_invitation_revoked(conn: Connection, invitation_id: UUID) -> None:
    await conn.execute(MARK_INVITATION_REVOKED, invitation_id)


async def list_tenant_invitations(
    conn: Connection, tenant_id: UUID, *, after: tuple[datetime, UUID] | None, limit: int
) -> list[asyncpg.Record]:
    return await conn.fetch(
        LIST_TENANT_INVITATIONS,
        tenant_id,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )
