"""Providers failing: failover, cooldowns, refused credentials, broken streams, leaving clients."""

from __future__ import annotations

import asyncio
import threading
import time

import asyncpg
import httpx
import msgspec
import openai
import prometheus_client
import pytest
import redis.asyncio as redis

from tally.live_balance import LiveBalances
from tests.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream
from tests.fixtures.gateway import GatewayServer, create_credential, create_route
from tests.integration.gateway.conftest import World, make_world
from tests.integration.gateway.test_openai_client import MESSAGES, usage_events


def _client_disconnects() -> float:
    """How many streams' clients the gateway (in this process) has seen leave."""
    value = prometheus_client.REGISTRY.get_sample_value("tally_gateway_client_disconnects_total")
    return value or 0.0


async def add_second_route(
    pool: asyncpg.Pool, server: GatewayServer, world: World, fake: FakeOpenAIUpstream
) -> None:
    """A lower-priority route of the same model on another provider."""
    credential = await create_credential(pool, kind=fake.kind, base_url=fake.base_url)
    await create_route(pool, world.model, credential, priority=1)
    await server.refresh()


@pytest.mark.parametrize("status", [429, 500, 503])
async def test_a_retryable_error_fails_over_to_the_next_route_and_cools_down(
    status: int,
    world: World,
    pool: asyncpg.Pool,
    gateway_server: GatewayServer,
    fakes: dict[str, FakeOpenAIUpstream],
) -> None:
    backup = fakes["deepseek"]
    await add_second_route(pool, gateway_server, world, backup)
    world.fake.script.append(Behaviour(status=status, retry_after="30"))
    completion = await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    assert completion.choices[0].message.content
    assert (len(world.fake.requests), len(backup.requests)) == (1, 1)
    [event] = await usage_events(pool)
    assert event["provider"] == "deepseek"
    # The failed route cools down: the next request goes straight to the backup.
    await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    assert (len(world.fake.requests), len(backup.requests)) == (1, 2)


async def test_a_request_error_is_not_failed_over_and_not_charged(
    world: World,
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
    gateway_server: GatewayServer,
    fakes: dict[str, FakeOpenAIUpstream],
) -> None:
    backup = fakes["deepseek"]
    await add_second_route(pool, gateway_server, world, backup)
    world.fake.script.append(
        Behaviour(
            status=400, error_message="context too long", error_code="context_length_exceeded"
        )
    )
    with pytest.raises(openai.BadRequestError) as info:
        await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    assert info.value.code == "context_length_exceeded"
    assert "context too long" in info.value.message
    assert backup.requests == []
    assert await usage_events(pool) == []
    snapshot = await LiveBalances(redis_client).snapshot(world.tenant_id)
    assert snapshot is not None
    assert (snapshot.holds_nano, snapshot.available_nano) == (0, 10**12)


async def test_a_refused_credential_is_disabled_recorded_and_failed_over(
    world: World,
    pool: asyncpg.Pool,
    gateway_server: GatewayServer,
    fakes: dict[str, FakeOpenAIUpstream],
) -> None:
    backup = fakes["xai"]
    await add_second_route(pool, gateway_server, world, backup)
    world.fake.api_key = "sk-rotated"  # the stored key no longer works: 401
    await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    assert len(backup.requests) == 1
    for _ in range(50):
        async with pool.acquire() as conn:
            row = await conn.fetchrow(
                "SELECT enabled, disabled_reason FROM provider_credentials WHERE id = $1",
                world.credential_id,
            )
            event = await conn.fetchval(
                "SELECT data::text FROM events WHERE type = 'CredentialDisabled'"
            )
        if event:
            break
        await asyncio.sleep(0.05)
    assert row is not None and not row["enabled"]
    assert "401" in row["disabled_reason"]
    data = msgspec.json.decode(event)
    assert (data["credential_id"], data["upstream_status"]) == (str(world.credential_id), 401)


async def test_when_every_route_fails_the_client_gets_a_clear_error_and_no_charge(
    world: World, pool: asyncpg.Pool
) -> None:
    world.fake.default = Behaviour(status=502)
    with pytest.raises(openai.APIStatusError) as info:
        await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    assert info.value.status_code == 502
    assert "All provider routes failed" in info.value.message
    assert await usage_events(pool) == []


async def test_an_unreachable_provider_fails_over(
    world: World,
    pool: asyncpg.Pool,
    gateway_server: GatewayServer,
    fakes: dict[str, FakeOpenAIUpstream],
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE provider_credentials SET base_url = 'http://127.0.0.1:9/v1' WHERE id = $1",
            world.credential_id,
        )
    await add_second_route(pool, gateway_server, world, fakes["poe"])
    completion = await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    assert completion.choices[0].message.content
    assert len(fakes["poe"].requests) == 1


async def test_an_upstream_that_hangs_times_out_and_the_request_is_not_charged(
    pool: asyncpg.Pool, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    from tests.fixtures.gateway import gateway_settings

    server = GatewayServer(gateway_settings(gateway_read_timeout_s=0.3, gateway_max_attempts=1))
    try:
        world = await make_world(pool, server, fakes["openai"])
        world.fake.script.append(Behaviour(latency=2.0))
        with pytest.raises(openai.APIStatusError) as info:
            await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
        assert info.value.status_code == 504
        assert await usage_events(pool) == []
        await world.client.close()
    finally:
        server.stop()


async def read_sse(response: httpx.Response) -> list[bytes]:
    return [line async for line in response.aiter_lines() if line]


async def test_a_stream_cut_mid_way_ends_with_an_error_event_and_charges_what_was_streamed(
    world: World, pool: asyncpg.Pool, gateway_server: GatewayServer
) -> None:
    world.fake.script.append(Behaviour(chunks=10, disconnect_after=4))
    async with httpx.AsyncClient(base_url=gateway_server.url, timeout=10) as http:
        async with http.stream(
            "POST",
            "/v1/chat/completions",
            headers={"authorization": f"Bearer {world.key}"},
            json={"model": world.model, "messages": MESSAGES, "stream": True},
        ) as response:
            lines = await read_sse(response)
    assert lines[-1].startswith('data: {"error"')
    assert "[DONE]" not in lines[-1]
    [event] = await usage_events(pool)
    assert (event["status"], event["estimated"]) == ("error", True)
    # 4 words of 3 characters streamed: ceil(12 / 4) = 3 output tokens.
    assert event["usage"]["output_tokens"] == 3
    # And the openai client raises on the error event instead of hanging.
    world.fake.script.append(Behaviour(chunks=10, disconnect_after=4))
    stream = await world.client.chat.completions.create(
        model=world.model, messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_an_in_stream_provider_error_reaches_the_client_as_an_error_event(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    world = await make_world(pool, gateway_server, fakes["openrouter"])
    world.fake.script.append(Behaviour(chunks=10, error_after=2))
    stream = await world.client.chat.completions.create(
        model=world.model, messages=MESSAGES, stream=True
    )
    received = ""
    with pytest.raises(openai.APIError, match="overloaded mid-stream"):
        async for chunk in stream:
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert received == "w0 w1 "
    [event] = await usage_events(pool)
    assert (event["status"], event["estimated"]) == ("error", True)
    await world.client.close()


async def test_a_client_that_leaves_mid_stream_is_charged_once_for_the_real_usage(
    world: World, pool: asyncpg.Pool, redis_client: redis.Redis, gateway_server: GatewayServer
) -> None:
    # The provider holds the rest of the stream until the gateway has seen the client leave,
    # so the test does not depend on how fast a loaded machine notices the disconnect.
    resume = threading.Event()
    world.fake.script.append(Behaviour(chunks=20, pause_after=3, resume=resume))
    left_before = _client_disconnects()
    try:
        async with httpx.AsyncClient(base_url=gateway_server.url, timeout=30) as http:
            async with http.stream(
                "POST",
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {world.key}"},
                json={"model": world.model, "messages": MESSAGES, "stream": True},
            ) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and "w2" in line:
                        break  # leave after three words
        deadline = time.monotonic() + 60
        while _client_disconnects() == left_before and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert _client_disconnects() == left_before + 1
    finally:
        resume.set()
    deadline = time.monotonic() + 60
    while not (events := await usage_events(pool)) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    [event] = events
    # The gateway kept reading upstream and learned the real usage: all 20 words.
    assert (event["status"], event["estimated"]) == ("client_disconnected", False)
    assert event["usage"]["output_tokens"] == 20
    assert event["charge_nano"] == 11 * 1_000 + 20 * 2_000
    snapshot = await LiveBalances(redis_client).snapshot(world.tenant_id)
    assert snapshot is not None
    assert snapshot.available_nano == 10**12 - event["charge_nano"]
    assert snapshot.holds_nano == 0


async def test_a_failed_call_before_any_output_releases_the_hold(
    world: World, pool: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    world.fake.default = Behaviour(status=500)
    with pytest.raises(openai.APIStatusError):
        await world.client.chat.completions.create(
            model=world.model, messages=MESSAGES, stream=True
        )
    snapshot = await LiveBalances(redis_client).snapshot(world.tenant_id)
    assert snapshot is not None
    assert (snapshot.holds_nano, snapshot.available_nano) == (0, 10**12)
    assert await usage_events(pool) == []


async def test_a_client_that_leaves_is_charged_for_what_was_streamed_when_upstream_stays_slow(
    pool: asyncpg.Pool, redis_client: redis.Redis, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    from tests.fixtures.gateway import gateway_settings

    server = GatewayServer(gateway_settings(gateway_disconnect_drain_s=0.3))
    # The provider stalls after three words until the test is done: the drain must give up.
    resume = threading.Event()
    try:
        world = await make_world(pool, server, fakes["openai"])
        world.fake.script.append(Behaviour(chunks=60, pause_after=3, resume=resume))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            async with http.stream(
                "POST",
                "/v1/chat/completions",
                headers={"authorization": f"Bearer {world.key}"},
                json={"model": world.model, "messages": MESSAGES, "stream": True},
            ) as response:
                async for line in response.aiter_lines():
                    if "w2" in line:
                        break
        deadline = time.monotonic() + 60
        while not (events := await usage_events(pool)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        [event] = events
        # The drain gave up while the provider stalled: usage is estimated from what was
        # streamed, and charged once.
        assert (event["status"], event["estimated"]) == ("client_disconnected", True)
        assert 1 <= event["usage"]["output_tokens"] < 45
        snapshot = await LiveBalances(redis_client).snapshot(world.tenant_id)
        assert snapshot is not None
        assert (snapshot.holds_nano, snapshot.unfolded_nano) == (0, event["charge_nano"])
        await world.client.close()
    finally:
        resume.set()
        server.stop()


async def test_a_provider_that_ignores_include_usage_still_ends_normally_and_is_estimated(
    world: World, pool: asyncpg.Pool
) -> None:
    world.fake.script.append(Behaviour(chunks=4, omit_usage=True))
    stream = await world.client.chat.completions.create(
        model=world.model,
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usages = "", []
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usages.append(chunk.usage)
    assert text == "w0 w1 w2 w3 "
    [usage] = usages  # the gateway's own, from its estimate, with the charge
    [event] = await usage_events(pool)
    assert (event["status"], event["estimated"]) == ("ok", True)
    assert usage.model_extra["cost_nano"] == event["charge_nano"] > 0
