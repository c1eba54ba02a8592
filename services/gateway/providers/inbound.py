"""Inbound wire formats other than OpenAI's: how `/v1/messages` (Anthropic) plugs in.

The gateway serves an inbound format by translating the request into an OpenAI chat completion
request, running the ordinary chat flow (routing to any provider, holds, metering), and
translating the answer back. A module implementing this exposes `INBOUND: InboundTranslator`;
`gateway.providers.anthropic_inbound` is the one `/v1/messages` loads.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Protocol

from tally.errors import TallyError

ANTHROPIC_INBOUND_MODULE = "gateway.providers.anthropic_inbound"


class InboundStreamEncoder(Protocol):
    """Turns the gateway's OpenAI chunks of one stream into the inbound format's SSE bytes."""

    def encode(self, chunk: dict[str, Any]) -> bytes:
        """One `chat.completion.chunk` (usage already stripped) → SSE bytes (may be b"")."""
        ...

    def finish(self, usage: dict[str, Any]) -> bytes:
        """The end of a complete stream; `usage` is OpenAI-style usage plus `cost_nano`."""
        ...

    def error(self, error: dict[str, Any]) -> bytes:
        """The provider failed mid-stream: `error` is {"message", "type", "code"}."""
        ...


class InboundTranslator(Protocol):
    def request_to_openai(self, body: dict[str, Any]) -> dict[str, Any]:
        """The inbound request → an OpenAI chat completion request (raise TallyError on bad input).

        Set `stream` as the caller asked; the gateway asks upstream for usage itself.
        """
        ...

    def response_from_openai(self, response: dict[str, Any]) -> dict[str, Any]:
        """A `chat.completion` (its `model` is the public name, `usage` has `cost_nano`)
        → the inbound format's response body."""
        ...

    def stream_encoder(self, model: str) -> InboundStreamEncoder: ...

    def error_body(self, error: TallyError) -> bytes:
        """An error in the inbound format's shape (its HTTP status is `error.status_code`)."""
        ...


def anthropic_inbound() -> InboundTranslator | None:
    """The `/v1/messages` translator, once its module exists."""
    if importlib.util.find_spec(ANTHROPIC_INBOUND_MODULE) is None:
        return None
    translator: InboundTranslator = importlib.import_module(ANTHROPIC_INBOUND_MODULE).INBOUND
    return translator
