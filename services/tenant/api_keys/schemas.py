"""Requests and responses of the API-key routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from tenant.fields import ModelName, Name, NonNegativeNano

AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]
# null means every model; an empty list would lock the key out of everything, so it is refused.
AllowedModels = Annotated[list[ModelName], msgspec.Meta(min_length=1, max_length=200)]
RpmLimit = Annotated[int, msgspec.Meta(ge=1, le=100_000_000)]
TpmLimit = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
KeyStatus = Literal["active", "revoked", "expired"]


class ApiKeyCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name = "default"
    expires_at: AwareDatetime | None = None
    allowed_models: AllowedModels | None = None
    rpm_limit: RpmLimit | None = None
    tpm_limit: TpmLimit | None = None
    # Most this key may spend, in nano-credits (1 credit = 10^9).
    spend_cap_nano: NonNegativeNano | None = None


class ApiKeyUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Only the fields present change; `null` removes a limit."""

    name: Name | UnsetType = UNSET
    expires_at: AwareDatetime | UnsetType | None = UNSET
    allowed_models: AllowedModels | UnsetType | None = UNSET
    rpm_limit: RpmLimit | UnsetType | None = UNSET
    tpm_limit: TpmLimit | UnsetType | None = UNSET
    spend_cap_nano: NonNegativeNano | UnsetType | None = UNSET


class ApiKeyRotate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # How long the old key keeps working, so clients can switch over; 0 revokes it at once.
    grace_seconds: Annotated[int, msgspec.Meta(ge=0, le=30 * 86_400)] = 0


class ApiKey(msgspec.Struct, frozen=True):
    id: UUID
    tenant_id: UUID
    name: str
    # The first characters of the key, to tell keys apart; the key itself is never shown again.
    prefix: str
    status: KeyStatus
    expires_at: datetime | None
    allowed_models: list[str] | None
    rpm_limit: int | None
    tpm_limit: int | None
    spend_cap_nano: int | None
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None
    replaced_by: UUID | None


class IssuedApiKey(ApiKey, frozen=True):
    """A new key. `key` is shown this once: store it now."""

    key: str


class ApiKeyPage(msgspec.Struct, frozen=True):
    data: list[ApiKey]
    next_cursor: str | None
