"""People logic: accounts, platform roles, memberships, invitations."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from tally.auth import Principal
from tally.config import Settings
from tally.db import Connection
from tally.errors import Conflict, Forbidden, InvalidRequest, NotFound, TallyError
from tally.events.tenant import (
    InvitationAccepted,
    InvitationRevoked,
    MembershipChanged,
    UserCreated,
    UserInvited,
    UserUpdated,
)
from tenant.auth.passwords import check_password_policy, hash_password
from tenant.pagination import created_cursor, decode_created_cursor
from tenant.people import repository
from tenant.people.schemas import (
    Invitation,
    InvitationPage,
    IssuedInvitation,
    Me,
    Member,
    MemberPage,
    TenantAccess,
    User,
    UserPage,
    UserUpdate,
)
from tenant.unit_of_work import UnitOfWork

_TENANT_RANK = {"member": 1, "admin": 2, "owner": 3}
PLATFORM_ROLES = ("operator", "finance")
INVITATION_PREFIX = "inv_"


class InvitationGone(TallyError):
    status_code = 410
    code = "invitation_expired"


def user_from_row(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        platform_roles=sorted(row["platform_roles"]),
        status=row["status"],
        has_password=row["password_hash"] is not None,
        sso_linked=row["oidc_subject"] is not None,
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def invitation_from_row(row: asyncpg.Record) -> Invitation:
    return Invitation(
        id=row["id"],
        tenant_id=row["tenant_id"],
        email=row["email"],
        role=row["role"],
        status=row["status"],
        expires_at=row["expires_at"],
        created_at=row["created_at"],
        accepted_at=row["accepted_at"],
    )


def hash_invitation_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _member_from_row(row: asyncpg.Record) -> Member:
    return Member(
        tenant_id=row["tenant_id"],
        user_id=row["user_id"],
        email=row["email"],
        role=row["role"],
        created_at=row["created_at"],
    )


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _check_may_grant(
    by: Principal | None, tenant_id: UUID, new_role: str | None, current_role: str | None
) -> None:
    """Operators and owners may do anything; admins may not touch owners or make new ones."""
    if by is None or by.has_platform_role("operator"):
        return
    if by.tenants.get(tenant_id) == "owner":
        return
    if new_role == "owner" or current_role == "owner":
        raise Forbidden("only an owner may grant, change or remove the owner role")


class PeopleService:
    async def create_user(
        self,
        uow: UnitOfWork,
        *,
        email: str,
        password: str | None,
        platform_roles: list[str],
        via: str = "direct",
        oidc: tuple[str, str] | None = None,
    ) -> asyncpg.Record:
        """Create an account (409 when the email has one). Returns the row."""
        if password is not None:
            check_password_policy(password, email=email)
        password_hash = await hash_password(password) if password is not None else None
        roles = sorted(set(platform_roles))
        user_id = uuid.uuid4()
        row = await repository.insert_user(
            uow.conn,
            user_id=user_id,
            email=email,
            password_hash=password_hash,
            platform_roles=roles,
            oidc=oidc,
        )
        if row is None:
            raise Conflict("an account with this email exists", param="email", code="email_taken")
        await uow.record(
            UserCreated(
                user_id=user_id,
                email=row["email"],
                platform_roles=roles,  # type: ignore[arg-type]
                actor=uow.actor,
                via=via,  # type: ignore[arg-type]
                has_password=password_hash is not None,
            )
        )
        return row

    async def get_user(self, conn: Connection, user_id: UUID) -> User:
        """One account, or 404."""
        row = await repository.fetch_user(conn, user_id)
        if row is None:
            raise NotFound("user not found", param="user_id")
        return user_from_row(row)

    async def resolve_user(self, conn: Connection, id_or_email: str) -> User:
        """An account by id or email, for the CLI."""
        try:
            return await self.get_user(conn, UUID(id_or_email))
        except ValueError:
            row = await repository.fetch_user_by_email(conn, id_or_email.strip())
            if row is None:
                raise NotFound(f"no account for {id_or_email!r}", param="user") from None
            return user_from_row(row)

    async def list_users(
        self, conn: Connection, *, search: str | None, cursor: str | None, limit: int
    ) -> UserPage:
        """Accounts newest first; `search` matches an email fragment."""
        rows = await repository.list_users(
            conn,
            like=f"%{_escape_like(search.strip())}%" if search and search.strip() else None,
            after=decode_created_cursor(cursor),
            limit=limit + 1,
        )
        users = [user_from_row(r) for r in rows[:limit]]
        last = users[-1] if users else None
        more = len(rows) > limit and last is not None
        return UserPage(
            data=users,
            next_cursor=created_cursor(last.created_at, last.id) if more and last else None,
        )

    async def update_user(self, uow: UnitOfWork, user_id: UUID, data: UserUpdate) -> User:
        """Change platform roles or status; disabling also ends every session of the person."""
        from tenant.auth.service import auth_service  # sessions live with sign-in

        row = await repository.fetch_user(uow.conn, user_id, for_update=True)
        if row is None:
            raise NotFound("user not found", param="user_id")
        current: dict[str, Any] = {
            "platform_roles": sorted(row["platform_roles"]),
            "status": row["status"],
        }
        wanted = dict(current)
        if isinstance(data.platform_roles, list):
            wanted["platform_roles"] = sorted(set(data.platform_roles))
        if isinstance(data.status, str):
            wanted["status"] = data.status
        changed = [f for f in current if current[f] != wanted[f]]
        if not changed:
            return user_from_row(row)
        was_operator = "operator" in current["platform_roles"] and current["status"] == "active"
        stays_operator = "operator" in wanted["platform_roles"] and wanted["status"] == "active"
        if was_operator and not stays_operator:
            # Someone must be able to manage the platform: keep at least one active operator.
            if not await repository.active_operators(uow.conn) - {user_id}:
                raise Conflict(
                    "the last active operator cannot be demoted or disabled", code="last_operator"
                )
        updated = await repository.update_user_access(
            uow.conn, user_id, wanted["platform_roles"], wanted["status"]
        )
        await uow.record(
            UserUpdated(
                user_id=user_id,
                before={f: current[f] for f in changed},
                after={f: wanted[f] for f in changed},
                actor=uow.actor,
            )
        )
        if wanted["status"] == "disabled" and current["status"] != "disabled":
            await auth_service.revoke_all_sessions(uow, user_id, reason="user_disabled")
        return user_from_row(updated)

    async def me(self, conn: Connection, user_id: UUID) -> Me:
        """The signed-in person and the tenants they belong to, read fresh from the tables."""
        row = await repository.fetch_user(conn, user_id)
        if row is None:
            raise NotFound("user not found", param="user_id")
        access = await repository.access_of_user(conn, user_id)
        return Me(
            user=user_from_row(row),
            tenants=[
                TenantAccess(tenant_id=a["tenant_id"], tenant_name=a["tenant_name"], role=a["role"])
                for a in access
            ],
        )

    async def principal_for(self, conn: Connection, user: asyncpg.Record) -> Principal:
        """What an access token for `user` says: platform roles and tenant roles, as of now."""
        access = await repository.access_of_user(conn, user["id"])
        return Principal(
            user_id=user["id"],
            email=user["email"],
            platform_roles=frozenset(user["platform_roles"]),
            tenants={a["tenant_id"]: a["role"] for a in access},
        )

    # --- memberships -------------------------------------------------------------------------

    async def list_members(
        self, conn: Connection, tenant_id: UUID, *, cursor: str | None, limit: int
    ) -> MemberPage:
        """The tenant's people, oldest membership first."""
        rows = await repository.list_members(
            conn, tenant_id, after=decode_created_cursor(cursor), limit=limit + 1
        )
        members = [_member_from_row(r) for r in rows[:limit]]
        last = members[-1] if members else None
        return MemberPage(
            data=members,
            next_cursor=created_cursor(last.created_at, last.user_id)
            if len(rows) > limit and last
            else None,
        )

    async def get_member(self, conn: Connection, tenant_id: UUID, user_id: UUID) -> Member:
        """One member of the tenant, or 404."""
        row = await repository.fetch_member(conn, tenant_id, user_id)
        if row is None:
            raise NotFound("this person is not a member of the tenant", param="user_id")
        return _member_from_row(row)

    async def set_membership(
        self,
        uow: UnitOfWork,
        tenant_id: UUID,
        user_id: UUID,
        role: str | None,
        *,
        by: Principal | None,
    ) -> None:
        """Give `user_id` the role `role` in the tenant (None removes them).

        The last owner can be neither removed nor demoted: someone must be able to manage
        the tenant's people.
        """
        if not await repository.lock_tenant(uow.conn, tenant_id):
            raise NotFound("tenant not found", param="tenant_id")
        current = await repository.membership_role(uow.conn, tenant_id, user_id)
        if current is None:
            # Adding someone who is not a member goes through an invitation.
            raise NotFound("this person is not a member of the tenant", param="user_id")
        _check_may_grant(by, tenant_id, role, current)
        if current == role:
            return
        if current == "owner" and await repository.count_owners(uow.conn, tenant_id) <= 1:
            raise Conflict(
                "the tenant's last owner cannot be removed or demoted", code="last_owner"
            )
        if role is None:
            await repository.delete_membership(uow.conn, tenant_id, user_id)
        else:
            await repository.upsert_membership(uow.conn, tenant_id, user_id, role)
        await uow.record(
            MembershipChanged(
                tenant_id=tenant_id,
                user_id=user_id,
                role_before=current,  # type: ignore[arg-type]
                role_after=role,  # type: ignore[arg-type]
                actor=uow.actor,
            )
        )

    async def add_member(self, uow: UnitOfWork, tenant_id: UUID, user_id: UUID, role: str) -> None:
        """Make `user_id` a member with `role`, or raise their role to it (never lower it)."""
        if not await repository.lock_tenant(uow.conn, tenant_id):
            raise NotFound("tenant not found", param="tenant_id")
        current = await repository.membership_role(uow.conn, tenant_id, user_id)
        if current is not None and _TENANT_RANK[current] >= _TENANT_RANK[role]:
            return
        await repository.upsert_membership(uow.conn, tenant_id, user_id, role)
        await uow.record(
            MembershipChanged(
                tenant_id=tenant_id,
                user_id=user_id,
                role_before=current,  # type: ignore[arg-type]
                role_after=role,  # type: ignore[arg-type]
                actor=uow.actor,
            )
        )

    # --- invitations -------------------------------------------------------------------------

    async def invite(
        self,
        uow: UnitOfWork,
        *,
        tenant_id: UUID | None,
        email: str,
        role: str,
        settings: Settings,
        by: Principal | None,
    ) -> IssuedInvitation:
        """Invite `email` into a tenant (tenant role) or to the platform (`tenant_id` None).

        The token is returned once, to be sent to the invitee; only its hash is stored.
        """
        if tenant_id is None and role not in PLATFORM_ROLES:
            raise InvalidRequest("platform invitations are for operator or finance", param="role")
        if tenant_id is not None:
            if role in PLATFORM_ROLES:
                raise InvalidRequest(
                    "tenant invitations are for owner, admin or member", param="role"
                )
            if not await repository.lock_tenant(uow.conn, tenant_id):
                raise NotFound("tenant not found", param="tenant_id")
            _check_may_grant(by, tenant_id, role, None)
        token = INVITATION_PREFIX + secrets.token_urlsafe(32)
        invitation_id = uuid.uuid4()
        expires_at = datetime.now(UTC) + timedelta(seconds=settings.invitation_ttl_seconds)
        row = await repository.insert_invitation(
            uow.conn,
            invitation_id=invitation_id,
            tenant_id=tenant_id,
            email=email,
            role=role,
            token_hash=hash_invitation_token(token),
            invited_by=uow.actor.id,
            expires_at=expires_at,
        )
        await uow.record(
            UserInvited(
                invitation_id=invitation_id,
                email=row["email"],
                role=role,
                expires_at=expires_at,
                actor=uow.actor,
                tenant_id=tenant_id,
            )
        )
        return IssuedInvitation(invitation=invitation_from_row(row), token=token)

    async def list_invitations(
        self, conn: Connection, tenant_id: UUID, *, cursor: str | None, limit: int
    ) -> InvitationPage:
        """The tenant's invitations, newest first, whatever their status."""
        rows = await repository.list_tenant_invitations(
            conn, tenant_id, after=decode_created_cursor(cursor), limit=limit + 1
        )
        items = [invitation_from_row(r) for r in rows[:limit]]
        last = items[-1] if items else None
        return InvitationPage(
            data=items,
            next_cursor=created_cursor(last.created_at, last.id)
            if len(rows) > limit and last
            else None,
        )

    async def revoke_invitation(
        self, uow: UnitOfWork, tenant_id: UUID, invitation_id: UUID, *, by: Principal | None
    ) -> Invitation:
        """Withdraw a pending invitation (409 when it was already accepted or revoked)."""
        row = await repository.tenant_invitation(uow.conn, tenant_id, invitation_id)
        if row is None:
            raise NotFound("invitation not found", param="invitation_id")
        _check_may_grant(by, tenant_id, row["role"], None)
        if row["status"] != "pending":
            raise Conflict(f"the invitation is already {row['status']}", code="not_pending")
        await repository.mark_invitation_revoked(uow.conn, invitation_id)
        await uow.record(
            InvitationRevoked(invitation_id=invitation_id, actor=uow.actor, tenant_id=tenant_id)
        )
        row = await repository.tenant_invitation(uow.conn, tenant_id, invitation_id)
        return invitation_from_row(row)

    async def pending_invitation(self, conn: Connection, token: str) -> asyncpg.Record:
        """The pending, unexpired invitation holding `token` (locked), or 404/410."""
        row = await repository.invitation_by_token(conn, hash_invitation_token(token))
        if row is None or row["status"] == "revoked":
            raise NotFound("invitation not found", param="token")
        if row["status"] == "accepted":
            raise InvitationGone("the invitation was already accepted", param="token")
        if row["expires_at"] <= datetime.now(UTC):
            raise InvitationGone("the invitation has expired", param="token")
        invitation: asyncpg.Record = row
        return invitation

    async def pending_invitations_for(self, conn: Connection, email: str) -> list[asyncpg.Record]:
        return await repository.pending_invitations_for(conn, email)

    async def apply_invitation(
        self, uow: UnitOfWork, invitation: asyncpg.Record, user: asyncpg.Record
    ) -> None:
        """Give `user` the invitation's role and mark it accepted."""
        if invitation["tenant_id"] is not None:
            await self.add_member(uow, invitation["tenant_id"], user["id"], invitation["role"])
        elif invitation["role"] not in user["platform_roles"]:
            roles = sorted({*user["platform_roles"], invitation["role"]})
            await repository.update_user_access(uow.conn, user["id"], roles, user["status"])
            await uow.record(
                UserUpdated(
                    user_id=user["id"],
                    before={"platform_roles": sorted(user["platform_roles"])},
                    after={"platform_roles": roles},
                    actor=uow.actor,
                )
            )
        await repository.mark_invitation_accepted(uow.conn, invitation["id"], user["id"])
        await uow.record(
            InvitationAccepted(
                invitation_id=invitation["id"],
                user_id=user["id"],
                role=invitation["role"],
                actor=uow.actor,
                tenant_id=invitation["tenant_id"],
            )
        )


people_service = PeopleService()
