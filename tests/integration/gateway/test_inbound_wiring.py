"""`/v1/messages`: the inbound-translator hook, driven by the official `anthropic` package.

The real translator is `gateway.providers.anthropic_inbound` (written with the Anthropic
adapter). This test plugs a minimal text-only translator into the same hook to prove the wiring:
routing to an OpenAI-wire provider, holds, metering, streams and errors in Anthropic's shape.
"""

from __future__ import annotations

from typing import Any

import anthropic
import asyncpg
import httpx
import msgspec
import pytest

from gateway import endpoints, service
from tally.errors import TallyError
from tests.fixtures.gateway import GatewayServer
from tests.integration.gateway.conftest import World
from tests.integration.gateway.test_openai_client import usage_events

_encode = msgspec.json.encode


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encode({"type": name, **data}) + b"\n\n"


class TextOnlyEncoder:
    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False

    def _start(self) -> bytes:
        if self.started:
            return b""
        self.started = True
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"message": message}) + _event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        )

    def encode(self, chunk: dict[str, Any]) -> bytes:
        text = chunk["choices"][0]["delta"].get("content") or ""
        out = self._start()
        if text:
            delta = {"index": 0, "delta": {"type": "text_delta", "text": text}}
            out += _event("content_block_delta", delta)
        return out

    def finish(self, usage: dict[str, Any]) -> bytes:
        return (
            self._start()
            + _event("content_block_stop", {"index": 0})
            + _event(
                "message_delta",
                {
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": {"output_tokens": usage["completion_tokens"]},
                },
            )
            + _event("message_stop", {})
        )

    def error(self, error: dict[str, Any]) -> bytes:
        return _event("error", {"error": {"type": "api_error", "message": error["message"]}})


class TextOnlyInbound:
    def request_to_openai(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        return {
            "model": body["model"],
            "messages": messages,
            "max_tokens": body["max_tokens"],
            "stream": bool(body.get("stream")),
        }

    def response_from_openai(self, response: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": response["model"],
            "content": [{"type": "text", "text": response["choices"][0]["message"]["content"]}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": response["usage"]["prompt_tokens"],
                "output_tokens": response["usage"]["completion_tokens"],
                "cost_nano": response["usage"]["cost_nano"],
            },
        }

    def stream_encoder(self, model: str) -> TextOnlyEncoder:
        return TextOnlyEncoder(model)

    def error_body(self, error: TallyError) -> bytes:
        kind = {401: "authentication_error", 402: "billing_error"}.get(
            error.status_code, "invalid_request_error"
        )
        return _encode({"type": "error", "error": {"type": kind, "message": error.message}})


@pytest.fixture
def inbound(monkeypatch: pytest.MonkeyPatch) -> TextOnlyInbound:
    translator = TextOnlyInbound()
    monkeypatch.setattr(service, "anthropic_inbound", lambda: translator)
    monkeypatch.setattr(endpoints, "anthropic_inbound", lambda: translator)
    return translator


async def test_messages_are_routed_metered_and_answered_in_anthropics_shape(
    inbound: TextOnlyInbound, world: World, pool: asyncpg.Pool, gateway_server: GatewayServer
) -> None:
    client = anthropic.AsyncAnthropic(base_url=gateway_server.url, api_key=world.key, max_retries=0)
    message = await client.messages.create(
        model=world.model, max_tokens=20, messages=[{"role": "user", "content": "Say hello"}]
    )
    assert message.content[0].text == "w0 w1 w2 w3 w4 w5 w6 w7 "
    assert message.model == world.model

    async with client.messages.stream(
        model=world.model, max_tokens=3, messages=[{"role": "user", "content": "Say hello"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "w0 w1 w2 "
    assert final.usage.output_tokens == 3

    events = await usage_events(pool)
    assert [e["endpoint"] for e in events] == ["chat.completions", "chat.completions"]
    assert world.fake.requests[-1].body["stream_options"] == {"include_usage": True}

    with pytest.raises(anthropic.AuthenticationError):
        await anthropic.AsyncAnthropic(
            base_url=gateway_server.url, api_key="tk_wrong", max_retries=0
        ).messages.create(
            model=world.model, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    await client.close()


async def test_messages_answer_404_until_the_translator_exists(
    world: World, gateway_server: GatewayServer
) -> None:
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        response = await http.post(
            "/v1/messages",
            headers={"x-api-key": world.key},
            json={"model": world.model, "max_tokens": 5, "messages": []},
        )
    assert response.status_code == 404
