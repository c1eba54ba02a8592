"""The provider-adapter interface: what every provider module implements, and what it gets.

The gateway's internal representation is the OpenAI wire format: chat completion requests,
responses and `chat.completion.chunk` dicts as OpenAI documents them. Each provider is one
adapter that translates between that format and its native wire format (N adapters, never N x M);
the gateway does the HTTP, the routing, the failover and the metering around it.

Adapters are translators: no I/O and no state shared between requests (request signing may
read the clock). They build an `UpstreamRequest` and parse the bytes the gateway hands back; the
gateway sends it, retries other routes, and meters. The gateway also sets the public model name
on non-streamed responses, adds `usage.cost_nano`, and writes the final usage chunk of a stream
itself from `StreamTranslator.usage`, so adapters need not emit a usage chunk.

Usage is normalised to `tally.pricing.TokenUsage`, whose counts are disjoint: `input_tokens`
excludes cached and cache-write tokens, `output_tokens` excludes reasoning tokens (see the
provider reference for which native fields include which).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol
from uuid import UUID

import msgspec

from tally.errors import TallyError
from tally.pricing import TokenUsage

# Where the gateway puts the routed model's output cap in a chat body when the client named no
# max_tokens: Anthropic requires max_tokens, and every adapter bounds the output by it so the
# hold placed for the worst case really is the worst case. Adapters never send this key on.
MODEL_MAX_OUTPUT_KEY = "tally_max_output_tokens"


class Credential(msgspec.Struct, frozen=True):
    """A decrypted provider credential, as the gateway hands it to an adapter."""

    id: UUID
    kind: str
    name: str
    base_url: str | None
    api_key: str | None  # None for bedrock
    access_key_id: str | None = None  # bedrock
    secret_access_key: str | None = None  # bedrock
    # Non-secret, provider-specific options, e.g. {"region": "us-east-1"}.
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class UpstreamRequest(msgspec.Struct, frozen=True):
    """One HTTP request to a provider, fully built (URL, auth headers, encoded body)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
CREDENTIAL_INVALID_STATUSES = frozenset({401, 403})


class UpstreamError(Exception):
    """A provider answered with an error (an HTTP error status or an in-stream error event).

    `retryable` errors (429, 5xx, 529, timeouts) make the gateway fail over to the next route;
    a non-retryable one is the request's own fault and goes back to the client as it is.
    `credential_invalid` (401/403) disables the credential. `status` 0 means no HTTP status
    (e.g. an error event inside a 200 stream); adapters then pick the status it stands for.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "upstream_error",
        code: str | None = None,
        retryable: bool | None = None,
        credential_invalid: bool | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.retryable = status in RETRYABLE_STATUSES if retryable is None else retryable
        self.credential_invalid = (
            status in CREDENTIAL_INVALID_STATUSES
            if credential_invalid is None
            else credential_invalid
        )
        # Seconds the provider asked us to wait (Retry-After), used as the cooldown.
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"UpstreamError({self.status}, {self.message!r}, code={self.code!r})"


class UnsupportedFeature(TallyError):
    """The request uses something the chosen provider cannot do (embeddings on Anthropic...)."""

    status_code = 400
    code = "unsupported_feature"


class ChatResult(msgspec.Struct):
    """A non-streamed chat completion, translated: the OpenAI `chat.completion` dict and usage."""

    response: dict[str, Any]
    usage: TokenUsage
    finish_reason: str | None


class StreamTranslator(Protocol):
    """Turns one upstream stream into OpenAI `chat.completion.chunk` dicts, incrementally.

    `usage` is set once the provider reported usage (None until then: the gateway estimates);
    `error` is set when the provider sent an in-stream error event.
    """

    usage: TokenUsage | None
    error: UpstreamError | None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Raw upstream bytes in (any split, partial frames kept) → chunks out (may be empty)."""
        ...

    def finish(self) -> list[dict[str, Any]]:
        """At upstream EOF: any final chunks (e.g. a finish_reason chunk)."""
        ...


class ProviderAdapter(Protocol):
    """One provider's wire format. Registered in `gateway.providers.ADAPTERS` by `kind`."""

    kind: str

    def chat_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamRequest:
        """The provider request for an OpenAI chat completion body (already validated).

        When `stream` is true the adapter asks the provider to report usage in the stream.
        """
        ...

    def chat_response(self, body: bytes) -> ChatResult:
        """A provider's non-streamed success body → OpenAI `chat.completion` and usage."""
        ...

    def stream_translator(self, model: str) -> StreamTranslator:
        """A fresh translator for one streamed response; `model` is the public model name."""
        ...

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        """A provider's error answer (status >= 400) → UpstreamError."""
        ...

    def embeddings_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        """The provider request for an OpenAI embeddings body; UnsupportedFeature if none."""
        ...

    def embeddings_response(
        self, body: bytes, request_body: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], TokenUsage]:
        """The provider's embeddings answer → OpenAI embeddings response shape and usage.

        `request_body` is the client's request, for providers that report no token counts
        (Gemini): the adapter then counts the input itself.
        """
        ...

    def images_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        """The provider request for an OpenAI image generation body; UnsupportedFeature if none."""
        ...

    def images_response(
        self, body: bytes, request_body: dict[str, Any]
    ) -> tuple[dict[str, Any], TokenUsage]:
        """The provider's images answer → OpenAI images response and usage.

        `TokenUsage.images` is keyed "SIZE/QUALITY" (e.g. "1024x1024/hd"), from the request.
        """
        ...


class CompletionsAdapter(ProviderAdapter, Protocol):
    """Optional: adapters of providers that still serve legacy `/v1/completions`.

    The gateway serves `/v1/completions` only through adapters that implement this too (the
    OpenAI-wire ones); others answer UnsupportedFeature. Streams use `stream_translator`, whose
    chunks are then `text_completion` objects passed through.
    """

    def completions_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamRequest: ...

    def completions_response(self, body: bytes) -> ChatResult: ...
