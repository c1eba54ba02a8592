"""Requests and responses of the model catalog."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from tally.events.tenant import ProviderKind
from tenant.fields import ModelName
from tenant.providers.schemas import CredentialName

# What a model takes and gives: `text` chat/completions, `image` image input (vision),
# `image_generation` images out, `audio` audio in or out, `embedding` embeddings.
Modality = Literal["text", "image", "image_generation", "audio", "embedding"]
Modalities = Annotated[list[Modality], msgspec.Meta(min_length=1, max_length=5)]
TokenCount = Annotated[int, msgspec.Meta(ge=1, le=100_000_000)]
# Routes are tried in ascending priority (0 before 1); equal priorities share traffic by weight.
Priority = Annotated[int, msgspec.Meta(ge=-1000, le=1000)]
RouteWeight = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
UpstreamModel = Annotated[
    str, msgspec.Meta(min_length=1, max_length=300, pattern=r"^[^\x00-\x20\x7f]+$")
]


class ModelCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: ModelName
    enabled: bool = True
    context_window: TokenCount | None = None
    max_output_tokens: TokenCount | None = None
    modalities: Modalities = msgspec.field(default_factory=lambda: ["text"])


class ModelUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    enabled: bool | UnsetType = UNSET
    context_window: TokenCount | UnsetType | None = UNSET
    max_output_tokens: TokenCount | UnsetType | None = UNSET
    modalities: Modalities | UnsetType = UNSET


class RouteCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A route of `model` through a credential, named by id or by name (`provider`)."""

    model: ModelName
    credential_id: UUID | None = None
    provider: CredentialName | None = None
    # The model id the provider knows; defaults to the public name.
    upstream_model: UpstreamModel | None = None
    priority: Priority = 0
    weight: RouteWeight = 1
    enabled: bool = True


class RouteUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    upstream_model: UpstreamModel | UnsetType = UNSET
    priority: Priority | UnsetType = UNSET
    weight: RouteWeight | UnsetType = UNSET
    enabled: bool | UnsetType = UNSET


class Route(msgspec.Struct, frozen=True):
    id: UUID
    model: str
    credential_id: UUID
    credential_name: str
    provider_kind: ProviderKind
    credential_enabled: bool
    upstream_model: str
    priority: int
    weight: int
    enabled: bool
    created_at: datetime


class Model(msgspec.Struct, frozen=True):
    name: str
    enabled: bool
    context_window: int | None
    max_output_tokens: int | None
    modalities: list[str]
    created_at: datetime
    updated_at: datetime
    # Shown to operators only: which credentials serve the model.
    routes: list[Route] | None = None


class ModelList(msgspec.Struct, frozen=True):
    data: list[Model]
