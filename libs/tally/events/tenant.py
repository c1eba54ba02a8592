"""Control-plane events: tenants, people, API keys, provider credentials, the model catalog.

Every admin action is one of these, carrying who did it (`actor`) and, for updates, the values
before and after (secrets never appear: only their last four characters).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import msgspec

from tally.eventlog import Event

TenantMode = Literal["prepaid", "metered"]
ProviderKind = Literal[
    "openai",
    "anthropic",
    "gemini",
    "bedrock",
    "deepseek",
    "ollama",
    "openrouter",
    "xai",
    "doubao",
    "poe",
]


class Actor(msgspec.Struct, frozen=True, omit_defaults=True):
    """Who did it: a user, an operator CLI run, or the system itself (e.g. the gateway)."""

    kind: Literal["user", "cli", "system"]
    id: str | None = None


class TenantCreated(Event, frozen=True):
    """A tenant (a customer business) was created."""

    tenant_id: UUID
    name: str
    mode: TenantMode
    actor: Actor
    billing_email: str | None = None


class TenantUpdated(Event, frozen=True):
    """Some of a tenant's fields changed; `before` and `after` hold only the changed ones."""

    tenant_id: UUID
    before: dict[str, Any]
    after: dict[str, Any]
    actor: Actor


class TenantSuspended(Event, frozen=True):
    """A tenant was suspended: its keys stop working until it is reactivated."""

    tenant_id: UUID
    reason: str
    actor: Actor


class TenantReactivated(Event, frozen=True):
    """A suspended tenant was reactivated."""

    tenant_id: UUID
    actor: Actor


class ApiKeyCreated(Event, frozen=True):
    """An API key was issued. Only its hash and a short prefix are ever stored."""

    tenant_id: UUID
    key_id: UUID
    name: str
    prefix: str
    actor: Actor
    expires_at: datetime | None = None
    allowed_models: list[str] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    spend_cap_nano: int | None = None


class ApiKeyRevoked(Event, frozen=True):
    """An API key was revoked; the gateway refuses it from now on."""

    tenant_id: UUID
    key_id: UUID
    actor: Actor


class CredentialAdded(Event, frozen=True):
    """An operator connected a provider credential (the secret itself is not in the log)."""

    credential_id: UUID
    kind: ProviderKind
    name: str
    last4: str
    actor: Actor
    base_url: str | None = None
    weight: int = 1


class CredentialDisabled(Event, frozen=True):
    """A credential stopped being used: by an operator, or by the gateway after a 401/403."""

    credential_id: UUID
    reason: str
    actor: Actor
    upstream_status: int | None = None


class CredentialEnabled(Event, frozen=True):
    """A disabled credential was enabled again."""

    credential_id: UUID
    actor: Actor


class ModelRouteAdded(Event, frozen=True):
    """A public model name got a route: a credential and the upstream model id to call."""

    model: str
    route_id: UUID
    credential_id: UUID
    upstream_model: str
    actor: Actor
    priority: int = 0
    weight: int = 1


class ModelUpdated(Event, frozen=True):
    """A public model was enabled, disabled, or its metadata changed."""

    model: str
    before: dict[str, Any]
    after: dict[str, Any]
    actor: Actor


class TenantMarginOverridden(Event, frozen=True):
    """A tenant's margin override changed (None removes it); a new price-book version."""

    tenant_id: UUID
    price_version: int
    margin_pct: Decimal | None
    actor: Actor


# --- people -------------------------------------------------------------------------------------

PlatformRoleName = Literal["operator", "finance"]
TenantRoleName = Literal["owner", "admin", "member"]


class UserCreated(Event, frozen=True):
    """A person got an account: created directly, or by accepting an invitation.

    The password hash never enters the log; `has_password` says whether one was set.
    """

    user_id: UUID
    email: str
    platform_roles: list[PlatformRoleName]
    actor: Actor
    via: Literal["direct", "invitation", "oidc"] = "direct"
    has_password: bool = True


class UserUpdated(Event, frozen=True):
    """A person's platform roles or status changed; `before`/`after` hold the changed fields."""

    user_id: UUID
    before: dict[str, Any]
    after: dict[str, Any]
    actor: Actor


class PasswordChanged(Event, frozen=True):
    """A person's password was set or changed; every refresh token of theirs was revoked."""

    user_id: UUID
    actor: Actor


class UserInvited(Event, frozen=True):
    """Someone was invited: into a tenant with a tenant role, or to a platform role."""

    invitation_id: UUID
    email: str
    role: str
    expires_at: datetime
    actor: Actor
    tenant_id: UUID | None = None


class InvitationAccepted(Event, frozen=True):
    """An invitation was accepted: `user_id` now holds its role."""

    invitation_id: UUID
    user_id: UUID
    role: str
    actor: Actor
    tenant_id: UUID | None = None


class InvitationRevoked(Event, frozen=True):
    """A pending invitation was withdrawn before anyone accepted it."""

    invitation_id: UUID
    actor: Actor
    tenant_id: UUID | None = None


class MembershipChanged(Event, frozen=True):
    """A person's role in a tenant changed; None before means added, None after means removed."""

    tenant_id: UUID
    user_id: UUID
    role_before: TenantRoleName | None
    role_after: TenantRoleName | None
    actor: Actor


class UserSignedIn(Event, frozen=True):
    """A person signed in and got a new session (an access and a refresh token)."""

    user_id: UUID
    method: Literal["password", "oidc", "invitation"]
    actor: Actor
    address: str | None = None


class SessionRevoked(Event, frozen=True):
    """A session (a refresh-token family) ended: signed out, or reuse of a rotated token seen.

    `reason` is `logout`, `reuse_detected` (a stolen token was probably replayed) or
    `password_changed`.
    """

    user_id: UUID
    family_id: UUID | None
    reason: Literal["logout", "reuse_detected", "password_changed", "user_disabled"]
    actor: Actor


# --- API keys, credentials, catalog: the changes the core events above do not cover ---------------


class ApiKeyUpdated(Event, frozen=True):
    """An API key's name, expiry, model allow-list, limits or spend cap changed."""

    tenant_id: UUID
    key_id: UUID
    before: dict[str, Any]
    after: dict[str, Any]
    actor: Actor


class ApiKeyRotated(Event, frozen=True):
    """Key `key_id` was replaced by `new_key_id` (whose `ApiKeyCreated` precedes this event).

    The old key stops working at once when `old_key_expires_at` is None, else at that time.
    """

    tenant_id: UUID
    key_id: UUID
    new_key_id: UUID
    actor: Actor
    old_key_expires_at: datetime | None = None


class CredentialUpdated(Event, frozen=True):
    """A credential's name, base URL, weight, options or secret changed.

    A new secret appears only as `last4` before and after.
    """

    credential_id: UUID
    before: dict[str, Any]
    after: dict[str, Any]
    actor: Actor


class CredentialsReencrypted(Event, frozen=True):
    """`tally secrets rotate` sealed `count` credentials again under key `key_id`."""

    key_id: str
    count: int
    actor: Actor


class ModelCreated(Event, frozen=True):
    """A public model name was added to the catalog."""

    model: str
    actor: Actor
    enabled: bool = True
    context_window: int | None = None
    max_output_tokens: int | None = None
    modalities: list[str] = msgspec.field(default_factory=lambda: ["text"])


class ModelRouteUpdated(Event, frozen=True):
    """A route's priority, weight or enabled flag changed."""

    model: str
    route_id: UUID
    before: dict[str, Any]
    after: dict[str, Any]
    actor: Actor


class ModelRouteRemoved(Event, frozen=True):
    """A route was removed from a model; the model keeps its other routes."""

    model: str
    route_id: UUID
    actor: Actor
