"""Anthropic, Gemini and Bedrock through the real gateway: `openai` and `anthropic` packages.

The fakes speak each provider's real wire format; the gateway routes to them, holds, meters
and settles exactly as for the OpenAI-wire providers: one UsageRecorded per request and
charge = tokens x price for every token kind. `/v1/messages` is served through the same
adapters (translated), or passed through natively when the route is Anthropic's.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import asyncpg
import openai
import pytest
import redis.asyncio as redis

from tally.live_balance import LiveBalances
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.upstream import FakeUpstream, Reply, ToolCall
from tests.fixtures.gateway import (
    GatewayServer,
    create_credential,
    create_key,
    create_model,
    create_route,
    create_tenant,
    set_price,
)
from tests.integration.gateway.test_openai_client import usage_events

KINDS = ["anthropic", "gemini", "bedrock"]
UPSTREAM_MODELS = {
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
    "bedrock": "anthropic.claude-3-5-sonnet-20240620-v1:0",
}
# Nano-credits per token at the prices set below (USD per million tokens, 1 credit = 1 USD).
INPUT, CACHED, OUTPUT, REASONING = 1_000, 500, 2_000, 3_000
# Native usage per provider and the same counts as disjoint token kinds:
# (input, cached, cache_write, output, reasoning).
NATIVE_USAGE: dict[str, tuple[dict[str, int], tuple[int, int, int, int, int]]] = {
    "anthropic": (
        {
            "input_tokens": 40,
            "cache_read_input_tokens": 6,
            "cache_creation_input_tokens": 3,
            "output_tokens": 9,
        },
        (40, 6, 3, 9, 0),
    ),
    "gemini": (
        {
            "promptTokenCount": 40,
            "cachedContentTokenCount": 6,
            "candidatesTokenCount": 9,
            "thoughtsTokenCount": 4,
        },
        (34, 6, 0, 9, 4),
    ),
    "bedrock": (
        {"inputTokens": 40, "outputTokens": 9, "cacheReadInputTokens": 6},
        (40, 6, 0, 9, 0),
    ),
}
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def expected_charge(counts: tuple[int, int, int, int, int]) -> int:
    input_tokens, cached, cache_write, output, reasoning = counts
    return (
        input_tokens * INPUT
        + cached * CACHED
        + cache_write * INPUT
        + output * OUTPUT
        + reasoning * REASONING
    )


@pytest.fixture
async def provider(request: pytest.FixtureRequest) -> AsyncIterator[FakeUpstream]:
    kind = request.param
    fake: FakeUpstream
    if kind == "anthropic":
        fake = FakeAnthropic(api_key="sk-ant-test")
    elif kind == "gemini":
        fake = FakeGemini(api_key="AIza-test")
    else:
        fake = FakeBedrock(region="eu-west-3")
    await fake.start()
    yield fake
    await fake.stop()


class World:
    def __init__(self, tenant_id: Any, key: str, model: str, server: GatewayServer) -> None:
        self.tenant_id = tenant_id
        self.key = key
        self.model = model
        self.openai = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        self.anthropic = anthropic.AsyncAnthropic(base_url=server.url, api_key=key, max_retries=0)

    async def close(self) -> None:
        await self.openai.close()
        await self.anthropic.close()


async def make_provider_world(
    pool: asyncpg.Pool,
    server: GatewayServer,
    kind: str,
    fake: FakeUpstream,
    *,
    max_output_tokens: int | None = None,
) -> World:
    model = f"house-{kind}"
    tenant_id = await create_tenant(pool, mode="prepaid", balance_nano=10**12)
    _key_id, key = await create_key(pool, tenant_id)
    if isinstance(fake, FakeBedrock):
        secret = json.dumps(
            {"access_key_id": fake.access_key_id, "secret_access_key": fake.secret_access_key}
        )
        credential_id = await create_credential(
            pool, kind=kind, base_url=fake.base_url, api_key=secret, options={"region": fake.region}
        )
    else:
        credential_id = await create_credential(
            pool, kind=kind, base_url=fake.base_url, api_key=fake.api_key
        )
    await create_model(pool, model, max_output_tokens=max_output_tokens)
    await create_route(pool, model, credential_id, upstream_model=UPSTREAM_MODELS[kind])
    await set_price(
        pool,
        model,
        input_per_mtok="1",
        output_per_mtok="2",
        cached_input_per_mtok="0.5",
        reasoning_per_mtok="3",
    )
    await server.refresh()
    return World(tenant_id, key, model, server)


async def _settled(pool: asyncpg.Pool, redis_client: redis.Redis, world: World, spent: int) -> None:
    snapshot = await LiveBalances(redis_client).snapshot(world.tenant_id)
    assert snapshot is not None
    assert snapshot.holds_nano == 0
    assert snapshot.available_nano == 10**12 - spent


@pytest.mark.parametrize("provider", KINDS, indirect=True)
async def test_chat_plain_and_streamed_are_charged_exactly(
    provider: FakeUpstream,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
    gateway_server: GatewayServer,
) -> None:
    kind = provider.kind if hasattr(provider, "kind") else ""
    kind = next(k for k in KINDS if type(provider).__name__.lower().endswith(k))
    native, counts = NATIVE_USAGE[kind]
    expected = expected_charge(counts)
    world = await make_provider_world(pool, gateway_server, kind, provider)
    provider.enqueue(
        Reply(text="Plain answer.", usage=native), Reply(text="Streamed.", usage=native)
    )

    raw = await world.openai.chat.completions.with_raw_response.create(
        model=world.model, messages=[{"role": "user", "content": "Hello"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Plain answer."
    assert completion.model == world.model
    assert completion.usage is not None
    assert completion.usage.model_extra["cost_nano"] == expected
    assert raw.headers["x-tally-charge-nano"] == str(expected)

    stream = await world.openai.chat.completions.create(
        model=world.model,
        messages=[{"role": "user", "content": "Hello"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Streamed."
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_extra["cost_nano"] == expected

    events = await usage_events(pool)
    assert [e["charge_nano"] for e in events] == [expected, expected]
    assert [e["status"] for e in events] == ["ok", "ok"]
    assert {e["provider"] for e in events} == {kind}
    assert not any(e.get("estimated") for e in events)
    await _settled(pool, redis_client, world, 2 * expected)
    await world.close()


@pytest.mark.parametrize("provider", KINDS, indirect=True)
async def test_tools_and_images_through_the_openai_package(
    provider: FakeUpstream, pool: asyncpg.Pool, gateway_server: GatewayServer
) -> None:
    kind = next(k for k in KINDS if type(provider).__name__.lower().endswith(k))
    world = await make_provider_world(pool, gateway_server, kind, provider, max_output_tokens=77)
    call = ToolCall(id="call_1", name="get_weather", arguments={"city": "Paris"})
    provider.enqueue(Reply(text="", tool_calls=[call]), Reply(text="A tiny image."))
    completion = await world.openai.chat.completions.create(
        model=world.model,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER],  # type: ignore[list-item]
    )
    [tool_call] = completion.choices[0].message.tool_calls or []
    assert tool_call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(tool_call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    assert completion.choices[0].finish_reason == "tool_calls"
    # No max_tokens from the client: the provider got the model's cap the hold was sized for.
    sent = provider.requests[-1].json
    caps = {"anthropic": sent.get("max_tokens"), "bedrock": sent.get("inferenceConfig", {})}
    if kind == "anthropic":
        assert caps["anthropic"] == 77
    elif kind == "gemini":
        assert sent["generationConfig"]["maxOutputTokens"] == 77
    else:
        assert sent["inferenceConfig"]["maxTokens"] == 77
    assert "tally_max_output_tokens" not in provider.requests[-1].body.decode()

    described = await world.openai.chat.completions.create(
        model=world.model,
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": PNG}},
                ],
            }
        ],
    )
    assert described.choices[0].message.content == "A tiny image."
    assert "iVBORw0KGgpmYWtl" in provider.requests[-1].body.decode()  # the image went upstream
    assert len(await usage_events(pool)) == 2
    await world.close()


@pytest.mark.parametrize("provider", ["gemini", "bedrock"], indirect=True)
async def test_embeddings_are_charged_for_their_input(
    provider: FakeUpstream, pool: asyncpg.Pool, gateway_server: GatewayServer
) -> None:
    kind = next(k for k in KINDS if type(provider).__name__.lower().endswith(k))
    world = await make_provider_world(pool, gateway_server, kind, provider)
    # Titan is Bedrock's embeddings model; Gemini's is text-embedding-004.
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE model_routes SET upstream_model = $1 WHERE model = $2",
            "amazon.titan-embed-text-v2:0" if kind == "bedrock" else "text-embedding-004",
            world.model,
        )
    await gateway_server.refresh()
    provider.enqueue(Reply(embedding_usage=7))
    result = await world.openai.embeddings.create(model=world.model, input="hello world")
    assert len(result.data) == 1 and result.data[0].embedding
    [event] = await usage_events(pool)
    assert result.usage.prompt_tokens == event["usage"]["input_tokens"] > 0
    assert event["charge_nano"] == event["usage"]["input_tokens"] * INPUT
    await world.close()


@pytest.mark.parametrize("provider", ["anthropic", "gemini"], indirect=True)
async def test_messages_through_the_anthropic_package(
    provider: FakeUpstream,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
    gateway_server: GatewayServer,
) -> None:
    """Anthropic's route is passed through natively; Gemini's is translated both ways."""
    kind = next(k for k in KINDS if type(provider).__name__.lower().endswith(k))
    native, counts = NATIVE_USAGE[kind]
    expected = expected_charge(counts)
    world = await make_provider_world(pool, gateway_server, kind, provider)
    provider.enqueue(
        Reply(text="Hi there.", usage=native), Reply(text="Streamed hi.", usage=native)
    )

    raw = await world.anthropic.messages.with_raw_response.create(
        model=world.model, max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
    )
    message = await raw.parse()  # type: ignore[misc]
    assert [b.text for b in message.content if b.type == "text"] == ["Hi there."]
    assert message.model == world.model
    assert message.usage.output_tokens == counts[3] + counts[4]
    assert raw.headers["x-tally-charge-nano"] == str(expected)
    if kind == "anthropic":
        # Native: the caller's body went upstream as it is (only the model renamed).
        assert provider.requests[-1].json["messages"] == [{"role": "user", "content": "Hello"}]
        assert message.usage.cache_read_input_tokens == 6

    async with world.anthropic.messages.stream(
        model=world.model, max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Streamed hi."
    assert final.usage.output_tokens == counts[3] + counts[4]

    events = await usage_events(pool)
    assert [e["charge_nano"] for e in events] == [expected, expected]
    assert [e["status"] for e in events] == ["ok", "ok"]
    await _settled(pool, redis_client, world, 2 * expected)

    # Anthropic-only parameters: passed through natively, refused (400) off the native route.
    if kind == "anthropic":
        provider.enqueue(Reply(text="k"))
        await world.anthropic.messages.create(
            model=world.model,
            max_tokens=8,
            extra_body={"top_k": 5},
            messages=[{"role": "user", "content": "x"}],
        )
        assert provider.requests[-1].json["top_k"] == 5
    else:
        with pytest.raises(anthropic.BadRequestError) as refused:
            await world.anthropic.messages.create(
                model=world.model,
                max_tokens=8,
                extra_body={"top_k": 5},
                messages=[{"role": "user", "content": "x"}],
            )
        assert "top_k" in str(refused.value)
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic.AsyncAnthropic(
            base_url=gateway_server.url, api_key="tk_wrong", max_retries=0
        ).messages.create(
            model=world.model, max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    await world.close()
