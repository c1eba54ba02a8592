"""The official `openai` package against the gateway, for every endpoint and every OpenAI-wire
provider kind, streaming included; every answer is charged exactly and recorded once."""

from __future__ import annotations

import asyncpg
import httpx
import msgspec
import openai
import pytest
import redis.asyncio as redis

from tally.live_balance import LiveBalances
from tests.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream
from tests.fixtures.gateway import GatewayServer, set_price
from tests.integration.gateway.conftest import OPENAI_WIRE_KINDS, World, make_world

# set_price's defaults: $1 / $2 per million input / output tokens, 1 credit = $1, no margin:
# one input token costs 1,000 nano-credits and one output token 2,000.
INPUT_NANO, OUTPUT_NANO = 1_000, 2_000
MESSAGES = [{"role": "user", "content": "Say hello to the nice people."}]


async def usage_events(pool: asyncpg.Pool) -> list[dict]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT data::text AS data, idempotency_key FROM events"
            " WHERE type = 'UsageRecorded' ORDER BY position"
        )
    return [msgspec.json.decode(r["data"]) | {"_key": r["idempotency_key"]} for r in rows]


@pytest.mark.parametrize("kind", OPENAI_WIRE_KINDS)
async def test_chat_completion_through_each_provider_is_charged_exactly(
    kind: str,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
    gateway_server: GatewayServer,
    fakes: dict[str, FakeOpenAIUpstream],
) -> None:
    fake = fakes[kind]
    fake.default = Behaviour(chunks=5, cached_tokens=4, reasoning_tokens=3)
    world = await make_world(pool, gateway_server, fake, balance_nano=10**12)
    raw = await world.client.chat.completions.with_raw_response.create(
        model=world.model, messages=MESSAGES, max_tokens=50
    )
    completion = raw.parse()

    assert completion.model == world.model
    assert completion.choices[0].message.content == "w0 w1 w2 w3 w4 "
    # The fake's tokenizer: ceil(29 / 4) + 3 = 11 prompt tokens; 5 words out.
    cached = 0 if kind == "ollama" else 4
    reasoning = 0 if kind == "ollama" else 3
    expected = (11 - cached) * INPUT_NANO + cached * INPUT_NANO + (5 + reasoning) * OUTPUT_NANO
    cost = completion.usage.model_extra["cost_nano"]
    assert cost == expected
    assert raw.headers["x-tally-charge-nano"] == str(expected)
    assert float(raw.headers["x-tally-overhead-ms"]) >= 0
    assert len(raw.headers["x-request-id"]) == 32

    sent = fake.requests[-1]
    assert sent.body["model"] == f"up-{world.model}"
    assert sent.headers["Authorization"] == "Bearer sk-fake"

    [event] = await usage_events(pool)
    assert event["_key"] == f"usage:{raw.headers['x-request-id']}"
    assert event["charge_nano"] == expected
    assert event["status"] == "ok"
    assert event["provider"] == kind
    assert event["usage"].get("cached_input_tokens", 0) == cached
    assert event["usage"].get("reasoning_tokens", 0) == reasoning
    snapshot = await LiveBalances(redis_client).snapshot(world.tenant_id)
    assert snapshot is not None
    assert snapshot.available_nano == 10**12 - expected
    assert snapshot.holds_nano == 0
    await world.client.close()


@pytest.mark.parametrize("kind", OPENAI_WIRE_KINDS)
async def test_streamed_chat_through_each_provider_ends_with_usage_and_done(
    kind: str,
    pool: asyncpg.Pool,
    gateway_server: GatewayServer,
    fakes: dict[str, FakeOpenAIUpstream],
) -> None:
    fake = fakes[kind]
    fake.default = Behaviour(chunks=6)
    world = await make_world(pool, gateway_server, fake)
    stream = await world.client.chat.completions.create(
        model=world.model,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage_chunks = "", []
    async for chunk in stream:
        assert chunk.model == world.model
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage_chunks.append(chunk.usage)
    assert text == "w0 w1 w2 w3 w4 w5 "
    [usage] = usage_chunks
    expected = 11 * INPUT_NANO + 6 * OUTPUT_NANO
    assert usage.model_extra["cost_nano"] == expected
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    [event] = await usage_events(pool)
    assert (event["charge_nano"], event["status"], event["estimated"]) == (expected, "ok", False)
    assert event["ttft_ms"] is not None
    await world.client.close()


async def test_a_stream_without_include_usage_gets_no_usage_chunk_but_is_metered(
    world: World, pool: asyncpg.Pool, gateway_server: GatewayServer
) -> None:
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        response = await http.post(
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {world.key}"},
            json={"model": world.model, "messages": MESSAGES, "stream": True},
        )
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [msgspec.json.decode(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all("usage" not in p for p in payloads)
    assert all(p["choices"] for p in payloads)
    # The gateway asked upstream for usage anyway, and recorded it.
    assert world.fake.requests[-1].body["stream_options"]["include_usage"] is True
    [event] = await usage_events(pool)
    assert event["charge_nano"] == 11 * INPUT_NANO + 8 * OUTPUT_NANO


async def test_tools_json_mode_and_image_parts_pass_through_untouched(world: World) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look something up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
        }
    ]
    completion = await world.client.chat.completions.create(
        model=world.model,
        messages=messages,
        tools=tools,
        tool_choice="auto",
        response_format={"type": "json_object"},
        temperature=0.2,
        extra_body={"vendor_flag": True},
    )
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.choices[0].message.tool_calls[0].function.name == "lookup"
    sent = world.fake.requests[-1].body
    assert sent["tools"] == tools
    assert sent["messages"] == messages
    assert sent["response_format"] == {"type": "json_object"}
    assert (sent["tool_choice"], sent["temperature"], sent["vendor_flag"]) == ("auto", 0.2, True)


async def test_legacy_completions_plain_and_streamed(world: World, pool: asyncpg.Pool) -> None:
    completion = await world.client.completions.create(
        model=world.model, prompt="Once upon a time", max_tokens=4
    )
    assert completion.choices[0].text == "w0 w1 w2 w3 "
    # "Once upon a time": ceil(16 / 4) = 4 prompt tokens, 4 out.
    assert completion.usage.model_extra["cost_nano"] == 4 * INPUT_NANO + 4 * OUTPUT_NANO

    stream = await world.client.completions.create(
        model=world.model,
        prompt="Once upon a time",
        max_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, cost = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
        if chunk.usage is not None:
            cost = chunk.usage.model_extra["cost_nano"]
    assert text == "w0 w1 w2 "
    assert cost == 4 * INPUT_NANO + 3 * OUTPUT_NANO
    assert [e["endpoint"] for e in await usage_events(pool)] == ["completions", "completions"]


async def test_embeddings_are_charged_for_input_tokens(world: World, pool: asyncpg.Pool) -> None:
    result = await world.client.embeddings.create(
        model=world.model, input=["first text", "second text"]
    )
    assert len(result.data) == 2
    assert len(result.data[0].embedding) == 8
    assert result.model == world.model
    # ceil(10 / 4) + ceil(11 / 4) = 6 tokens.
    assert result.usage.model_extra["cost_nano"] == 6 * INPUT_NANO
    [event] = await usage_events(pool)
    assert (event["endpoint"], event["charge_nano"]) == ("embeddings", 6 * INPUT_NANO)


async def test_images_are_charged_per_image_by_size_and_quality(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    world = await make_world(pool, gateway_server, fakes["openai"])
    await set_price(
        pool,
        world.model,
        input_per_mtok="0",
        output_per_mtok="0",
        per_image={"1024x1024": "0.04", "1024x1024/hd": "0.08"},
    )
    await gateway_server.refresh()
    raw = await world.client.images.with_raw_response.generate(
        model=world.model, prompt="a lighthouse", n=2, quality="hd", size="1024x1024"
    )
    images = raw.parse()
    assert len(images.data) == 2
    assert raw.headers["x-tally-charge-nano"] == str(2 * 80_000_000)
    [event] = await usage_events(pool)
    assert event["usage"]["images"] == {"1024x1024/hd": 2}
    assert event["charge_nano"] == 160_000_000
    await world.client.close()


async def test_models_lists_only_what_the_key_may_use(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    world = await make_world(pool, gateway_server, fakes["openai"], model="alpha")
    other = await make_world(
        pool, gateway_server, fakes["openai"], model="beta", allowed_models=["beta"]
    )
    assert sorted(m.id for m in (await world.client.models.list()).data) == ["alpha", "beta"]
    assert [m.id for m in (await other.client.models.list()).data] == ["beta"]
    await world.client.close()
    await other.client.close()


async def test_responses_carry_a_fresh_request_id_even_when_the_caller_sends_one(
    world: World, pool: asyncpg.Pool
) -> None:
    ids = set()
    for _ in range(2):
        raw = await world.client.chat.completions.with_raw_response.create(
            model=world.model, messages=MESSAGES, extra_headers={"x-request-id": "mine"}
        )
        ids.add(raw.headers["x-request-id"])
    # A caller's id would make two requests share one usage event; both are recorded.
    assert len(ids) == 2
    assert len(await usage_events(pool)) == 2


async def test_the_openapi_document_lists_the_v1_routes(gateway_server: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        schema = (await http.get("/schema/openapi.json")).json()
        health = await http.get("/healthz")
    for path in (
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/images/generations",
        "/v1/models",
    ):
        assert path in schema["paths"]
    assert health.status_code == 200


async def test_the_litestar_routes_serve_the_same_api_without_the_fast_path(
    pool: asyncpg.Pool, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    from tests.fixtures.gateway import gateway_settings

    server = GatewayServer(gateway_settings(gateway_fast_path=False))
    try:
        world = await make_world(pool, server, fakes["openai"])
        raw = await world.client.chat.completions.with_raw_response.create(
            model=world.model, messages=MESSAGES
        )
        assert raw.parse().usage.model_extra["cost_nano"] == int(raw.headers["x-tally-charge-nano"])
        with pytest.raises(openai.BadRequestError):
            await world.client.chat.completions.create(model=world.model, messages=[])
        await world.client.close()
    finally:
        server.stop()


async def test_fast_path_requests_are_counted_in_the_http_metrics(
    world: World, gateway_server: GatewayServer
) -> None:
    await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        exposition = (await http.get("/metrics")).text
    assert (
        'tally_http_requests_total{method="POST",route="/v1/chat/completions",'
        'service="gateway",status="200"}'
    ) in exposition
