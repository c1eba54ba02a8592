"""HTTP routes of accounts (operators), tenant members and invitations."""

from __future__ import annotations

from uuid import UUID

from litestar import delete, get, patch, post
from litestar.params import FromPath, JSONBody

from tally.auth import require_platform_role
from tenant.pagination import DEFAULT_LIMIT
from tenant.params import Caller, Cursor, Limit, Search, Services
from tenant.people.schemas import (
    InvitationCreate,
    InvitationPage,
    IssuedInvitation,
    Member,
    MemberPage,
    MembershipUpdate,
    PlatformInvitationCreate,
    User,
    UserCreate,
    UserPage,
    UserUpdate,
)
from tenant.people.service import people_service, user_from_row

_operator = [require_platform_role("operator")]


@post("/v1/users", guards=_operator, status_code=201, tags=["people"])
async def create_user(data: JSONBody[UserCreate], principal: Caller, runtime: Services) -> User:
    """Create an account with platform roles (operators). Tenant people come by invitation."""
    async with runtime.unit(principal) as uow:
        row = await people_service.create_user(
            uow,
            email=data.email,
            password=data.password,
            platform_roles=list(data.platform_roles),
        )
        return user_from_row(row)


@get("/v1/users", guards=_operator, tags=["people"])
async def list_users(
    runtime: Services,
    search: Search = None,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> UserPage:
    """Accounts newest first; `search` matches an email fragment."""
    async with runtime.pool.acquire() as conn:
        return await people_service.list_users(conn, search=search, cursor=cursor, limit=limit)


@get("/v1/users/{user_id:uuid}", guards=_operator, tags=["people"])
async def get_user(user_id: FromPath[UUID], runtime: Services) -> User:
    async with runtime.pool.acquire() as conn:
        return await people_service.get_user(conn, user_id)


@patch("/v1/users/{user_id:uuid}", guards=_operator, tags=["people"])
async def update_user(
    user_id: FromPath[UUID], data: JSONBody[UserUpdate], principal: Caller, runtime: Services
) -> User:
    """Change platform roles, or disable an account (which ends its sessions)."""
    async with runtime.unit(principal) as uow:
        return await people_service.update_user(uow, user_id, data)


@post("/v1/invitations", guards=_operator, status_code=201, tags=["people"])
async def invite_to_platform(
    data: JSONBody[PlatformInvitationCreate], principal: Caller, runtime: Services
) -> IssuedInvitation:
    """Invite someone as operator or finance; the token in the answer is shown once."""
    async with runtime.unit(principal) as uow:
        return await people_service.invite(
            uow,
            tenant_id=None,
            email=data.email,
            role=data.role,
            settings=runtime.settings,
            by=principal,
        )


@get("/v1/tenants/{tenant_id:uuid}/members", tags=["people"])
async def list_members(
    tenant_id: FromPath[UUID],
    principal: Caller,
    runtime: Services,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> MemberPage:
    """The tenant's people and their roles."""
    principal.require_tenant(tenant_id)
    async with runtime.pool.acquire() as conn:
        return await people_service.list_members(conn, tenant_id, cursor=cursor, limit=limit)


@patch("/v1/tenants/{tenant_id:uuid}/members/{user_id:uuid}", tags=["people"])
async def change_member_role(
    tenant_id: FromPath[UUID],
    user_id: FromPath[UUID],
    data: JSONBody[MembershipUpdate],
    principal: Caller,
    runtime: Services,
) -> Member:
    """Change a member's role (admins; only owners grant or change `owner`)."""
    principal.require_tenant(tenant_id, "admin")
    async with runtime.unit(principal) as uow:
        await people_service.set_membership(uow, tenant_id, user_id, data.role, by=principal)
        return await people_service.get_member(uow.conn, tenant_id, user_id)


@delete("/v1/tenants/{tenant_id:uuid}/members/{user_id:uuid}", tags=["people"])
async def remove_member(
    tenant_id: FromPath[UUID], user_id: FromPath[UUID], principal: Caller, runtime: Services
) -> None:
    """Remove someone from the tenant (the last owner cannot be removed)."""
    principal.require_tenant(tenant_id, "admin")
    async with runtime.unit(principal) as uow:
        await people_service.set_membership(uow, tenant_id, user_id, None, by=principal)


@post("/v1/tenants/{tenant_id:uuid}/invitations", status_code=201, tags=["people"])
async def invite_to_tenant(
    tenant_id: FromPath[UUID],
    data: JSONBody[InvitationCreate],
    principal: Caller,
    runtime: Services,
) -> IssuedInvitation:
    """Invite someone into the tenant (admins; only owners invite owners). The token in the
    answer is shown once: send it to the invitee."""
    principal.require_tenant(tenant_id, "admin")
    async with runtime.unit(principal) as uow:
        return await people_service.invite(
            uow,
            tenant_id=tenant_id,
            email=data.email,
            role=data.role,
            settings=runtime.settings,
            by=principal,
        )


@get("/v1/tenants/{tenant_id:uuid}/invitations", tags=["people"])
async def list_invitations(
    tenant_id: FromPath[UUID],
    principal: Caller,
    runtime: Services,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> InvitationPage:
    principal.require_tenant(tenant_id, "admin")
    async with runtime.pool.acquire() as conn:
        return await people_service.list_invitations(conn, tenant_id, cursor=cursor, limit=limit)


@delete("/v1/tenants/{tenant_id:uuid}/invitations/{invitation_id:uuid}", tags=["people"])
async def revoke_invitation(
    tenant_id: FromPath[UUID], invitation_id: FromPath[UUID], principal: Caller, runtime: Services
) -> None:
    """Withdraw a pending invitation."""
    principal.require_tenant(tenant_id, "admin")
    async with runtime.unit(principal) as uow:
        await people_service.revoke_invitation(uow, tenant_id, invitation_id, by=principal)


ROUTES = [
    create_user,
    list_users,
    get_user,
    update_user,
    invite_to_platform,
    list_members,
    change_member_role,
    remove_member,
    invite_to_tenant,
    list_invitations,
    revoke_invitation,
]
