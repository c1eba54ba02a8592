"""Driving provider adapters over real HTTP, and a minimal OpenAI/Anthropic-speaking front so
the official `openai` and `anthropic` packages can exercise the translation end to end.

`MiniGateway` does only what the gateway does with an adapter (build the upstream request,
send it, translate the answer or the stream, strip the usage chunk the client did not ask
for, price the usage); routing, auth, holds and the event log are the gateway's own business
and are tested there.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web

from gateway.providers import ADAPTERS, anthropic_inbound
from gateway.providers.base import ChatResult, Credential, UpstreamError, UpstreamRequest
from tally.errors import TallyError
from tally.pricing import ModelPrice, TokenUsage, price_usage

# Distinct rates for every token kind, so a count landing in the wrong kind changes the charge.
PRICE = ModelPrice(
    input_per_mtok=Decimal("3"),
    cached_input_per_mtok=Decimal("0.3"),
    cache_write_per_mtok=Decimal("3.75"),
    output_per_mtok=Decimal("15"),
    reasoning_per_mtok=Decimal("20"),
)
MARGIN = Decimal("0")
CREDIT_PRICE_USD = Decimal("0.01")


def expected_charge_nano(usage: TokenUsage) -> int:
    """tokens x rate for each kind, by hand: USD -> credits (0.01 USD) -> nano-credits."""
    usd = (
        usage.input_tokens * Decimal("3")
        + usage.cached_input_tokens * Decimal("0.3")
        + usage.cache_write_tokens * Decimal("3.75")
        + usage.output_tokens * Decimal("15")
        + usage.reasoning_tokens * Decimal("20")
    ) / Decimal(1_000_000)
    return int((usd / CREDIT_PRICE_USD * Decimal(10**9)).to_integral_value())


def charge_nano(usage: TokenUsage) -> int:
    return price_usage(
        usage, PRICE, margin_pct=MARGIN, credit_price_usd=CREDIT_PRICE_USD
    ).charge_nano


def credential(kind: str, base_url: str, **extra: Any) -> Credential:
    return Credential(id=uuid.uuid4(), kind=kind, name=f"{kind}-test", base_url=base_url, **extra)


async def send(
    session: aiohttp.ClientSession, request: UpstreamRequest
) -> tuple[int, dict[str, str], bytes]:
    async with session.request(
        request.method, request.url, headers=request.headers, data=request.body
    ) as response:
        return response.status, dict(response.headers), await response.read()


async def chat(
    session: aiohttp.ClientSession, kind: str, cred: Credential, model: str, body: dict[str, Any]
) -> ChatResult:
    """A plain chat completion through the adapter; provider errors raise UpstreamError."""
    adapter = ADAPTERS[kind]
    status, headers, raw = await send(
        session, adapter.chat_request(cred, model, body, stream=False)
    )
    if status >= 400:
        raise adapter.error(status, headers, raw)
    return adapter.chat_response(raw)


def awkward_pieces(data: bytes, rng: random.Random) -> list[bytes]:
    """Bytes cut at arbitrary points (1 to 9 bytes), as a slow network would deliver them."""
    pieces, start = [], 0
    while start < len(data):
        size = rng.randint(1, 9)
        pieces.append(data[start : start + size])
        start += size
    return pieces


@dataclass
class StreamOutcome:
    chunks: list[dict[str, Any]] = field(default_factory=list)
    usage: TokenUsage | None = None
    error: UpstreamError | None = None
    status: int = 200

    @property
    def text(self) -> str:
        return "".join(
            c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c["choices"]
        )

    @property
    def finish_reasons(self) -> list[str]:
        return [
            c["choices"][0]["finish_reason"]
            for c in self.chunks
            if c["choices"] and c["choices"][0]["finish_reason"]
        ]

    def tool_calls(self) -> list[dict[str, Any]]:
        calls: dict[int, dict[str, Any]] = {}
        for chunk in self.chunks:
            for choice in chunk["choices"]:
                for call in choice["delta"].get("tool_calls") or []:
                    entry = calls.setdefault(
                        call["index"], {"id": None, "name": "", "arguments": ""}
                    )
                    entry["id"] = call.get("id") or entry["id"]
                    function = call.get("function") or {}
                    entry["name"] += function.get("name") or ""
                    entry["arguments"] += function.get("arguments") or ""
        return [calls[i] for i in sorted(calls)]


async def chat_stream(
    session: aiohttp.ClientSession,
    kind: str,
    cred: Credential,
    model: str,
    body: dict[str, Any],
    *,
    seed: int = 7,
) -> StreamOutcome:
    """A streamed chat completion, the upstream bytes fed to the translator in awkward pieces."""
    adapter = ADAPTERS[kind]
    request = adapter.chat_request(cred, model, body, stream=True)
    outcome = StreamOutcome()
    rng = random.Random(seed)
    async with session.request(
        request.method, request.url, headers=request.headers, data=request.body
    ) as response:
        outcome.status = response.status
        if response.status >= 400:
            outcome.error = adapter.error(
                response.status, dict(response.headers), await response.read()
            )
            return outcome
        translator = adapter.stream_translator(model)
        async for data in response.content.iter_any():
            for piece in awkward_pieces(data, rng):
                outcome.chunks.extend(translator.feed(piece))
        outcome.chunks.extend(translator.finish())
        outcome.usage = translator.usage
        outcome.error = translator.error
    return outcome


class MiniGateway:
    """`/v1/chat/completions`, `/v1/embeddings` and `/v1/messages` over one provider route."""

    def __init__(self, kind: str, cred: Credential, upstream_model: str) -> None:
        self.kind = kind
        self.cred = cred
        self.upstream_model = upstream_model
        self.adapter = ADAPTERS[kind]
        self.usages: list[TokenUsage] = []
        self.charges: list[int] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.base_url = ""

    async def start(self) -> MiniGateway:
        app = web.Application()
        app.add_routes(
            [
                web.post("/v1/chat/completions", self.chat_completions),
                web.post("/v1/embeddings", self.embeddings),
                web.post("/v1/messages", self.messages),
            ]
        )
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _meter(self, usage: TokenUsage) -> int:
        self.usages.append(usage)
        charge = charge_nano(usage)
        self.charges.append(charge)
        return charge

    @staticmethod
    def _openai_error(status: int, message: str, type_: str, code: str | None) -> web.Response:
        body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        return web.json_response(body, status=status)

    async def _open(self, request: UpstreamRequest) -> aiohttp.ClientResponse:
        assert self._session is not None
        return await self._session.request(
            request.method, request.url, headers=request.headers, data=request.body
        )

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = bool(body.get("stream"))
        try:
            upstream = self.adapter.chat_request(
                self.cred, self.upstream_model, body, stream=stream
            )
        except TallyError as exc:
            return self._openai_error(exc.status_code, exc.message, exc.error_type, exc.code)
        response = await self._open(upstream)
        async with response:
            if response.status >= 400:
                error = self.adapter.error(
                    response.status, dict(response.headers), await response.read()
                )
                return self._openai_error(error.status, error.message, error.type, error.code)
            if not stream:
                result = self.adapter.chat_response(await response.read())
                result.response["model"] = body["model"]
                charge = self._meter(result.usage)
                result.response["usage"]["cost_nano"] = charge
                return web.json_response(
                    result.response, headers={"x-tally-charge-nano": str(charge)}
                )
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            out = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await out.prepare(request)
            translator = self.adapter.stream_translator(body["model"])

            async def write(chunks: list[dict[str, Any]]) -> None:
                for chunk in chunks:
                    if (
                        not chunk["choices"]
                        and chunk.get("usage") is not None
                        and not include_usage
                    ):
                        continue
                    await out.write(f"data: {json.dumps(chunk)}\n\n".encode())

            async for data in response.content.iter_any():
                await write(translator.feed(data))
                if translator.error is not None:
                    break
            if translator.error is not None:
                error = translator.error
                payload = {
                    "error": {"message": error.message, "type": error.type, "code": error.code}
                }
                await out.write(f"data: {json.dumps(payload)}\n\n".encode())
            else:
                await write(translator.finish())
            if translator.usage is not None:
                self._meter(translator.usage)
            await out.write(b"data: [DONE]\n\n")
            await out.write_eof()
            return out

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        try:
            upstream = self.adapter.embeddings_request(self.cred, self.upstream_model, body)
        except TallyError as exc:
            return self._openai_error(exc.status_code, exc.message, exc.error_type, exc.code)
        response = await self._open(upstream)
        async with response:
            raw = await response.read()
            if response.status >= 400:
                error = self.adapter.error(response.status, dict(response.headers), raw)
                return self._openai_error(error.status, error.message, error.type, error.code)
        # The adapters here accept the request body to encode vectors and estimate usage.
        result, usage = self.adapter.embeddings_response(raw, request_body=body)  # type: ignore[call-arg]
        result["model"] = body["model"]
        self._meter(usage)
        return web.json_response(result)

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stream = bool(body.get("stream"))
        if self.kind == "anthropic":
            return await self._native_messages(request, body, stream)
        try:
            internal = anthropic_inbound.messages_to_chat_request(body)
            upstream = self.adapter.chat_request(
                self.cred, self.upstream_model, internal, stream=stream
            )
        except TallyError as exc:
            return web.json_response(
                anthropic_inbound.error_body(exc.status_code, exc.message, exc.error_type),
                status=exc.status_code,
            )
        response = await self._open(upstream)
        async with response:
            if response.status >= 400:
                error = self.adapter.error(
                    response.status, dict(response.headers), await response.read()
                )
                return web.json_response(
                    anthropic_inbound.error_body(error.status, error.message, error.type),
                    status=error.status,
                )
            if not stream:
                result = self.adapter.chat_response(await response.read())
                self._meter(result.usage)
                return web.json_response(
                    anthropic_inbound.chat_result_to_message(
                        result.response, result.usage, model=body["model"]
                    )
                )
            out = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await out.prepare(request)
            translator = self.adapter.stream_translator(body["model"])
            encoder = anthropic_inbound.MessagesStreamEncoder(body["model"])
            async for data in response.content.iter_any():
                for chunk in translator.feed(data):
                    await out.write(encoder.feed(chunk))
                if translator.error is not None:
                    error = translator.error
                    await out.write(encoder.error(error.status, error.message, error.type))
                    await out.write_eof()
                    return out
            for chunk in translator.finish():
                await out.write(encoder.feed(chunk))
            if translator.usage is not None:
                self._meter(translator.usage)
            await out.write(encoder.finish(translator.usage))
            await out.write_eof()
            return out

    async def _native_messages(
        self, request: web.Request, body: dict[str, Any], stream: bool
    ) -> web.StreamResponse:
        adapter: Any = self.adapter
        upstream = adapter.messages_request(self.cred, self.upstream_model, body, stream=stream)
        response = await self._open(upstream)
        async with response:
            raw_headers = {"content-type": response.headers.get("content-type", "application/json")}
            if response.status >= 400 or not stream:
                raw = await response.read()
                if response.status < 400:
                    _message, usage = adapter.messages_usage(raw)
                    self._meter(usage)
                return web.Response(body=raw, status=response.status, headers=raw_headers)
            out = web.StreamResponse(headers=raw_headers)
            await out.prepare(request)
            meter = adapter.messages_stream_meter()
            async for data in response.content.iter_any():
                meter.feed(data)
                await out.write(data)
            meter.finish()
            if meter.usage is not None:
                self._meter(meter.usage)
            await out.write_eof()
            return out


async def started(gateway: MiniGateway) -> AsyncIterator[MiniGateway]:
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()
