"""Inbound wire formats other than OpenAI's: how `/v1/messages` (Anthropic) plugs in.

The gateway serves an inbound format by translating the request into an OpenAI chat completion
request, running the ordinary chat flow (routing to any provider, holds, metering), and
translating the answer back: one translation layer per inbound format, on top of the one adapter
per provider (never N x M). A module implementing this exposes `INBOUND: InboundTranslator`;
`gateway.providers.anthropic_inbound` is the one `/v1/messages` loads.

When a request is routed to a provider that speaks the inbound format itself
(`InboundTranslator.native_kind`, and the adapter implements `NativeInboundAdapter`), the gateway
forwards the caller's body as it is and relays the answer unchanged: nothing is lost in
translation. Metering is the same either way (the adapter's own usage parsing).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Protocol

from gateway.providers.base import Credential, UpstreamRequest
from tally.errors import TallyError
from tally.pricing import TokenUsage

ANTHROPIC_INBOUND_MODULE = "gateway.providers.anthropic_inbound"


class InboundStreamEncoder(Protocol):
    """Turns the gateway's OpenAI chunks of one stream into the inbound format's SSE bytes."""

    def feed(self, chunk: dict[str, Any]) -> bytes:
        """One `chat.completion.chunk` → SSE bytes (may be b"")."""
        ...

    def finish(self, usage: TokenUsage | None = None) -> bytes:
        """The end of a complete stream; `usage` is what the gateway metered."""
        ...

    def error(self, status: int, message: str, openai_type: str | None = None) -> bytes:
        """The provider failed mid-stream: an in-stream error event that ends the stream."""
        ...


class InboundTranslator(Protocol):
    # Routes to adapters of this kind get the caller's body natively (None: always translate).
    native_kind: str | None

    def request_to_openai(
        self, body: dict[str, Any], *, native_only: bool = False
    ) -> dict[str, Any]:
        """The inbound request → an OpenAI chat completion request (raise TallyError on bad input).

        Parameters only the native provider understands raise UnsupportedFeature, unless
        `native_only` (the request can only go to a native route): then they are left out of
        the translation, which is used for sizing the hold only.
        """
        ...

    def response_from_openai(
        self, response: dict[str, Any], usage: TokenUsage, *, model: str
    ) -> dict[str, Any]:
        """A translated `chat.completion` and its metered usage → the inbound response body."""
        ...

    def stream_encoder(self, model: str) -> InboundStreamEncoder: ...

    def error_body(self, error: TallyError) -> bytes:
        """An error in the inbound format's shape (its HTTP status is `error.status_code`)."""
        ...


class NativeInboundAdapter(Protocol):
    """An adapter whose provider speaks the inbound format (Anthropic for `/v1/messages`).

    Streams are metered with the adapter's ordinary `stream_translator` fed the relayed bytes.
    """

    def messages_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamRequest:
        """The caller's body, forwarded to `upstream_model`."""
        ...

    def messages_usage(self, body: bytes) -> tuple[dict[str, Any], TokenUsage]:
        """A native non-streamed answer, relayed, and its usage."""
        ...


def anthropic_inbound() -> InboundTranslator | None:
    """The `/v1/messages` translator, once its module exists."""
    if importlib.util.find_spec(ANTHROPIC_INBOUND_MODULE) is None:
        return None
    translator: InboundTranslator = importlib.import_module(ANTHROPIC_INBOUND_MODULE).INBOUND
    return translator
