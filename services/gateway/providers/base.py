"""The provider-adapter interface shared by the gateway and every provider module.

The gateway's internal representation is the OpenAI wire format (chat completion request,
response and chunk dicts). Each provider is one adapter that translates between that format and
the provider's native wire format, so N providers need N adapters, never N x M translations.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol
from uuid import UUID

import msgspec

from tally.errors import TallyError
from tally.pricing import TokenUsage


class Credential(msgspec.Struct, frozen=True):
    """A decrypted provider credential."""

    id: UUID
    kind: str
    name: str
    base_url: str | None
    api_key: str | None  # None for bedrock
    access_key_id: str | None = None  # bedrock
    secret_access_key: str | None = None  # bedrock
    options: dict[str, Any] = {}  # e.g. {"region": "us-east-1"}


class UpstreamRequest(msgspec.Struct, frozen=True):
    """One HTTP request to a provider, ready to send."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class UpstreamError(Exception):
    """The provider answered with an error (an HTTP error status or an in-stream error event)."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = "upstream_error",
        code: str | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        # Rate limits, server errors and Anthropic's 529 "overloaded" clear up on their own.
        self.retryable = retryable if retryable is not None else status == 429 or status >= 500
        # The key itself was refused: the gateway disables the credential and fails over.
        self.credential_invalid = status in (401, 403)


class UnsupportedFeature(TallyError):
    """The request uses a feature the target provider lacks; the message names both."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "unsupported_feature"


class ChatResult(msgspec.Struct):
    """A translated non-streaming chat completion."""

    response: dict[str, Any]  # OpenAI chat.completion
    usage: TokenUsage
    finish_reason: str | None


class StreamTranslator(Protocol):
    """Turns one upstream streaming body into OpenAI chat.completion.chunk dicts."""

    usage: TokenUsage | None  # known once the provider reported usage (else None: estimate)
    error: UpstreamError | None  # set when the provider sent an in-stream error event

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Raw upstream bytes in, chunks out (may be empty); partial frames are buffered."""
        ...

    def finish(self) -> list[dict[str, Any]]:
        """At upstream EOF: any final chunks (e.g. the finish_reason chunk)."""
        ...


class ProviderAdapter(Protocol):
    """One provider's wire format."""

    kind: str

    def chat_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamRequest: ...

    def chat_response(self, body: bytes) -> ChatResult: ...

    def stream_translator(self, model: str) -> StreamTranslator: ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError: ...

    def embeddings_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        """Raise UnsupportedFeature if the provider has no embeddings."""
        ...

    def embeddings_response(self, body: bytes) -> tuple[dict[str, Any], TokenUsage]:
        """OpenAI embeddings response shape."""
        ...

    def images_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        """Raise UnsupportedFeature if the provider has no image generation."""
        ...

    def images_response(
        self, body: bytes, request_body: dict[str, Any]
    ) -> tuple[dict[str, Any], TokenUsage]:
        """OpenAI images response shape; TokenUsage.images keyed "SIZE/QUALITY"."""
        ...
