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
