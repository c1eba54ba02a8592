"""What the fake AI providers share: a real local aiohttp server, scripted replies, and a
record of every request received.

A test scripts what the "model" says (`Reply`: text, tool calls, stop reason, native usage, or
an error); each fake renders it in its provider's own wire format, plain or streamed, after
checking the request the way the provider does (auth headers, required fields, roles, ...) and
answering a bad one with the provider's own error shape.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class Reply:
    """One scripted model answer; fields a provider does not have are ignored by its fake."""

    text: str = "Hello! How can I help you today?"
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop_reason: str | None = None  # native value; None = the provider's natural one
    usage: dict[str, Any] = field(default_factory=dict)  # native usage fields
    thinking: str | None = None
    # An HTTP error instead of an answer: (status, native error type, message).
    error: tuple[int, str, str] | None = None
    # An error event inside a 200 stream, sent after the first text delta: (type, message).
    stream_error: tuple[str, str] | None = None
    blocked: str | None = None  # Gemini: the prompt's blockReason (no candidates)
    candidates: int = 1  # Gemini: how many candidates to return
    embedding_usage: int | None = None  # token count an embeddings response reports


@dataclass
class Received:
    method: str
    path: str  # as received, still percent-encoded
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


class ProviderError(Exception):
    """Raised inside a fake's handler to answer with the provider's error shape."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def split_words(text: str) -> list[str]:
    """Text cut into the small pieces a model streams (word by word, spaces kept)."""
    pieces: list[str] = []
    current = ""
    for char in text:
        current += char
        if char == " ":
            pieces.append(current)
            current = ""
    if current:
        pieces.append(current)
    return pieces


def split_json(arguments: dict[str, Any], size: int = 7) -> list[str]:
    """Tool-call arguments as the partial JSON fragments providers stream."""
    raw = json.dumps(arguments)
    return [raw[i : i + size] for i in range(0, len(raw), size)] or ["{}"]


class FakeUpstream:
    """Base: start/stop the server, queue replies, record requests."""

    def __init__(self, api_key: str = "test-key") -> None:
        self.api_key = api_key
        self.replies: deque[Reply] = deque()
        self.requests: list[Received] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def enqueue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def next_reply(self) -> Reply:
        return self.replies.popleft() if self.replies else Reply()

    @property
    def last(self) -> Received:
        return self.requests[-1]

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def base_path(self) -> str:
        return ""

    async def start(self) -> FakeUpstream:
        app = web.Application(middlewares=[self._record])
        app.add_routes(self.routes())
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}{self.base_path()}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Received(
                request.method,
                request.raw_path.split("?", 1)[0],
                dict(request.query),
                dict(request.headers),
                body,
            )
        )
        response: web.StreamResponse = await handler(request)
        return response
