"""`/v1/messages` routed to an OpenAI-wire provider, driven by the official `anthropic` package.

The translation is `gateway.providers.anthropic_inbound` (Anthropic, Gemini and Bedrock routes
are in test_native_providers.py): routing, holds, metering, streams and errors in Anthropic's
shape.
"""

from __future__ import annotations

from typing import Any

import anthropic
import asyncpg
import httpx
import msgspec
import pytest

from tests.fixtures.gateway import GatewayServer
from tests.integration.gateway.conftest import World
from tests.integration.gateway.test_openai_client import usage_events

_encode = msgspec.json.encode


async def test_messages_are_routed_metered_and_answered_in_anthropics_shape(
    world: World, pool: asyncpg.Pool, gateway_server: GatewayServer
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


async def test_bad_messages_requests_get_a_precise_400_in_anthropics_shape(
    world: World, pool: asyncpg.Pool, gateway_server: GatewayServer
) -> None:
    bad_bodies: list[Any] = [
        {"model": world.model, "max_tokens": 5, "messages": []},
        {"model": world.model, "messages": [{"role": "user", "content": "x"}]},
        {"model": world.model, "max_tokens": 5, "messages": [{"role": "robot", "content": "x"}]},
        {"model": world.model, "max_tokens": 5, "messages": "x"},
        [1, 2],
    ]
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        for body in bad_bodies:
            response = await http.post("/v1/messages", headers={"x-api-key": world.key}, json=body)
            assert response.status_code == 400, body
            error = response.json()
            assert error["type"] == "error"
            assert error["error"]["type"] == "invalid_request_error"
            assert error["error"]["message"]
    assert await usage_events(pool) == []
