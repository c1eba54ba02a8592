"""Requests and responses of people, memberships and invitations."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from tenant.fields import Email, Password

PlatformRole = Literal["operator", "finance"]
TenantRole = Literal["owner", "admin", "member"]
UserStatus = Literal["active", "disabled"]
PlatformRoles = Annotated[list[PlatformRole], msgspec.Meta(max_length=2)]
# Invitation tokens are "inv_" and 43 url-safe characters; anything much longer is not one.
InvitationToken = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class UserCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    email: Email
    # Omit for people who will sign in only through single sign-on.
    password: Password | None = None
    platform_roles: PlatformRoles = msgspec.field(default_factory=list)


class UserUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    platform_roles: PlatformRoles | UnsetType = UNSET
    # `disabled` also ends every session of the person.
    status: UserStatus | UnsetType = UNSET


class User(msgspec.Struct, frozen=True):
    id: UUID
    email: str
    platform_roles: list[str]
    status: UserStatus
    has_password: bool
    sso_linked: bool
    created_at: datetime
    updated_at: datetime


class UserPage(msgspec.Struct, frozen=True):
    data: list[User]
    next_cursor: str | None


class Member(msgspec.Struct, frozen=True):
    tenant_id: UUID
    user_id: UUID
    email: str
    role: TenantRole
    created_at: datetime


class MemberPage(msgspec.Struct, frozen=True):
    data: list[Member]
    next_cursor: str | None


class MembershipUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: TenantRole


class InvitationCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    email: Email
    role: TenantRole = "member"


class PlatformInvitationCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    email: Email
    role: PlatformRole


class Invitation(msgspec.Struct, frozen=True):
    id: UUID
    tenant_id: UUID | None
    email: str
    role: str
    status: Literal["pending", "accepted", "revoked"]
    expires_at: datetime
    created_at: datetime
    accepted_at: datetime | None


class IssuedInvitation(msgspec.Struct, frozen=True):
    """A new invitation and its token: shown once, to be sent to the invitee."""

    invitation: Invitation
    token: str


class InvitationPage(msgspec.Struct, frozen=True):
    data: list[Invitation]
    next_cursor: str | None


class InvitationAccept(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: InvitationToken
    # A new account sets its password here; an existing account confirms with its password.
    password: Password | None = None


class TenantAccess(msgspec.Struct, frozen=True):
    tenant_id: UUID
    tenant_name: str
    role: TenantRole


class Me(msgspec.Struct, frozen=True):
    user: User
    tenants: list[TenantAccess]


class PasswordChange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    current_password: Password
    new_password: Password
