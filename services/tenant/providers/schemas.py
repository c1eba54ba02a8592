"""Requests and responses of the provider-credential routes.

Secrets go in (`api_key`, or `access_key_id` + `secret_access_key` for Bedrock) and never come
out: responses show `last4` only.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from tally.events.tenant import ProviderKind
from tenant.fields import Reason

CredentialName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
Secret = Annotated[str, msgspec.Meta(min_length=1, max_length=8192, pattern=r"^[\x21-\x7e]+$")]
BaseUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
Weight = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
Region = Annotated[str, msgspec.Meta(pattern=r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")]
OptionKey = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
OptionValue = Annotated[str, msgspec.Meta(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]
Options = Annotated[dict[OptionKey, OptionValue], msgspec.Meta(max_length=32)]


class CredentialCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: ProviderKind
    # Defaults to the kind (`openai`, then `openai-2`, ...); models name it in their routes.
    name: CredentialName | None = None
    # The provider's API key. Optional for Ollama, which ignores it.
    api_key: Secret | None = None
    # Bedrock only: an AWS access-key pair and the region.
    access_key_id: Secret | None = None
    secret_access_key: Secret | None = None
    region: Region | None = None
    # Where to send requests; defaults to the provider's public API.
    base_url: BaseUrl | None = None
    weight: Weight = 1
    # Provider-specific settings that are not secret (they are shown in responses).
    options: Options | None = None


class CredentialUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Only the fields present change. A new secret replaces the old one."""

    name: CredentialName | UnsetType = UNSET
    api_key: Secret | UnsetType = UNSET
    access_key_id: Secret | UnsetType = UNSET
    secret_access_key: Secret | UnsetType = UNSET
    region: Region | UnsetType = UNSET
    base_url: BaseUrl | UnsetType | None = UNSET
    weight: Weight | UnsetType = UNSET
    options: Options | UnsetType = UNSET


class CredentialDisable(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Reason = "disabled by an operator"


class Credential(msgspec.Struct, frozen=True):
    id: UUID
    kind: ProviderKind
    name: str
    base_url: str | None
    options: dict[str, str]
    weight: int
    enabled: bool
    disabled_reason: str | None
    # The last four characters of the secret (empty when the secret is too short to show any).
    last4: str
    # The id of the encryption key the secret is sealed under (see `tally secrets rotate`).
    secret_key_id: str
    created_at: datetime
    updated_at: datetime


class CredentialList(msgspec.Struct, frozen=True):
    data: list[Credential]


class ConnectionTest(msgspec.Struct, frozen=True):
    """What the provider said when asked for its model list with this credential."""

    ok: bool
    outcome: Literal["ok", "rejected", "error", "unreachable", "unsupported"]
    # The provider's HTTP status, when it answered.
    status: int | None
    latency_ms: int
    message: str


class SecretsRotated(msgspec.Struct, frozen=True):
    key_id: str
    reencrypted: int
