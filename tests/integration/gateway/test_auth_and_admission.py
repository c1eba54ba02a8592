"""Who may call, and how much: keys, tenants, allow-lists, rate limits, credits and caps."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import openai
import pytest
import redis.asyncio as redis

from tally.invalidation import publish_invalidation
from tally.live_balance import LiveBalances
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.fixtures.gateway import GatewayServer
from tests.integration.gateway.conftest import World, make_world
from tests.integration.gateway.test_openai_client import MESSAGES, usage_events


async def post_chat(server: GatewayServer, headers: dict[str, str], body: object) -> httpx.Response:
    async with httpx.AsyncClient(base_url=server.url) as http:
        return await http.post("/v1/chat/completions", headers=headers, json=body)


def assert_openai_error(response: httpx.Response, status: int, code: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    assert response.headers["x-request-id"]
    return error


async def test_missing_unknown_and_malformed_keys_get_401(
    world: World, gateway_server: GatewayServer
) -> None:
    body = {"model": world.model, "messages": MESSAGES}
    for headers in ({}, {"authorization": "Bearer tk_nope"}, {"authorization": "Basic abc"}):
        response = await post_chat(gateway_server, headers, body)
        assert_openai_error(response, 401, "invalid_api_key")
    assert world.fake.requests == []


async def test_the_key_may_come_in_x_api_key(world: World, gateway_server: GatewayServer) -> None:
    response = await post_chat(
        gateway_server, {"x-api-key": world.key}, {"model": world.model, "messages": MESSAGES}
    )
    assert response.status_code == 200


async def test_a_revoked_key_is_refused_within_one_second(
    world: World, pool: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    await world.client.chat.completions.create(model=world.model, messages=MESSAGES)  # cached
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE api_keys SET status = 'revoked', revoked_at = now() WHERE id = $1",
            world.key_id,
        )
    await publish_invalidation(redis_client, "api_key", str(world.key_id))
    revoked_at = time.monotonic()
    while True:
        try:
            await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
        except openai.AuthenticationError:
            break
        assert time.monotonic() - revoked_at < 1.0, "revoked key still accepted after 1 s"
        await asyncio.sleep(0.01)


async def test_an_expired_key_is_refused(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    world = await make_world(
        pool, gateway_server, fakes["openai"], expires_at=datetime.now(UTC) - timedelta(seconds=1)
    )
    with pytest.raises(openai.AuthenticationError, match="expired"):
        await world.client.chat.completions.create(model=world.model, messages=MESSAGES)


async def test_a_suspended_tenant_gets_403(
    world: World, pool: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("UPDATE tenants SET status = 'suspended' WHERE id = $1", world.tenant_id)
    await publish_invalidation(redis_client, "tenant", str(world.tenant_id))
    await asyncio.sleep(0.2)
    with pytest.raises(openai.PermissionDeniedError) as info:
        await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    assert info.value.code == "tenant_suspended"


async def test_a_model_outside_the_allow_list_gets_403_and_an_unknown_one_404(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    world = await make_world(pool, gateway_server, fakes["openai"], allowed_models=["other"])
    with pytest.raises(openai.PermissionDeniedError) as denied:
        await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    assert denied.value.code == "model_not_allowed"
    with pytest.raises(openai.NotFoundError) as missing:
        await world.client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert missing.value.code == "model_not_found"
    assert world.fake.requests == []


async def test_a_model_without_a_price_is_refused_not_served_unmetered(
    world: World, pool: asyncpg.Pool, gateway_server: GatewayServer
) -> None:
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM model_prices WHERE model = $1", world.model)
    await gateway_server.refresh()
    with pytest.raises(openai.BadRequestError) as info:
        await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    assert info.value.code == "model_not_priced"
    assert world.fake.requests == []


async def test_insufficient_credits_is_402_before_any_upstream_call(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    # The hold's input bound is the body's size in bytes (a token is at least one byte), about
    # 110 tokens here: ~110,000 nano-credits plus the output at 2,000 per token.
    world = await make_world(pool, gateway_server, fakes["openai"], balance_nano=200_000)
    with pytest.raises(openai.APIStatusError) as info:
        await world.client.chat.completions.create(
            model=world.model, messages=MESSAGES, max_tokens=1000
        )
    assert info.value.status_code == 402
    assert info.value.code == "insufficient_credits"
    # It says how much the request needs and how much there is.
    assert "200000 nano-credits" in info.value.message
    assert "needs up to" in info.value.message
    assert world.fake.requests == []
    assert await usage_events(pool) == []
    # A request whose worst case fits is served.
    await world.client.chat.completions.create(model=world.model, messages=MESSAGES, max_tokens=5)


async def test_rate_limits_answer_429_with_retry_after_and_ratelimit_headers(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    world = await make_world(pool, gateway_server, fakes["openai"], rpm_limit=3)
    for left in (2, 1, 0):
        raw = await world.client.chat.completions.with_raw_response.create(
            model=world.model, messages=MESSAGES
        )
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-remaining-requests"] == str(left)
    response = await post_chat(
        gateway_server,
        {"authorization": f"Bearer {world.key}"},
        {"model": world.model, "messages": MESSAGES},
    )
    assert_openai_error(response, 429, "rate_limit_exceeded")
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert len(world.fake.requests) == 3


async def test_token_limits_count_the_estimate_and_correct_it_with_real_usage(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    world = await make_world(pool, gateway_server, fakes["openai"], tpm_limit=150)
    # Estimate: ~27 input + 50 output = ~77 tokens of 150; the real usage is 11 + 8 = 19.
    await world.client.chat.completions.create(model=world.model, messages=MESSAGES, max_tokens=50)
    # Had the estimate stuck, 77 + 77 > 150 would refuse this one; corrected, 19 + 77 fits.
    await world.client.chat.completions.create(model=world.model, messages=MESSAGES, max_tokens=50)
    with pytest.raises(openai.RateLimitError):
        await world.client.chat.completions.create(
            model=world.model, messages=MESSAGES, max_tokens=120
        )


async def test_tenant_rate_limits_apply_across_its_keys(
    world: World, pool: asyncpg.Pool, redis_client: redis.Redis, gateway_server: GatewayServer
) -> None:
    from tests.fixtures.gateway import create_key

    async with pool.acquire() as conn:
        await conn.execute("UPDATE tenants SET rpm_limit = 2 WHERE id = $1", world.tenant_id)
    await publish_invalidation(redis_client, "tenant", str(world.tenant_id))
    await asyncio.sleep(0.2)
    _, second_key = await create_key(pool, world.tenant_id)
    second = openai.AsyncOpenAI(
        base_url=gateway_server.url + "/v1", api_key=second_key, max_retries=0
    )
    await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
    await second.chat.completions.create(model=world.model, messages=MESSAGES)
    with pytest.raises(openai.RateLimitError, match="organization"):
        await second.chat.completions.create(model=world.model, messages=MESSAGES)
    await second.close()


async def test_a_key_spend_cap_refuses_once_spent(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    # One request (max_tokens 8) costs 27,000 and holds ~122,000 (its body's bytes as input):
    # 0 + 122k and 27k + 122k fit under 160k, 54k + 122k does not.
    world = await make_world(pool, gateway_server, fakes["openai"], spend_cap_nano=160_000)
    for _ in range(2):
        await world.client.chat.completions.create(
            model=world.model, messages=MESSAGES, max_tokens=8
        )
    with pytest.raises(openai.APIStatusError) as info:
        await world.client.chat.completions.create(
            model=world.model, messages=MESSAGES, max_tokens=8
        )
    assert (info.value.status_code, info.value.code) == (402, "spend_cap_reached")


async def test_a_metered_tenant_skips_holds_but_respects_its_budget_cap(
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
    gateway_server: GatewayServer,
    fakes: dict[str, FakeOpenAIUpstream],
) -> None:
    world = await make_world(
        pool, gateway_server, fakes["openai"], mode="metered", balance_nano=None
    )
    raw = await world.client.chat.completions.with_raw_response.create(
        model=world.model, messages=MESSAGES, max_tokens=8
    )
    charge = int(raw.headers["x-tally-charge-nano"])
    assert charge == 27_000
    assert await LiveBalances(redis_client).snapshot(world.tenant_id) is None
    # A budget cap: spent so far (27,000, rebuilt from the log) + the next worst case > 40,000.
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE tenants SET budget_cap_nano = 40000 WHERE id = $1", world.tenant_id
        )
    await publish_invalidation(redis_client, "tenant", str(world.tenant_id))
    await asyncio.sleep(0.2)
    with pytest.raises(openai.APIStatusError) as info:
        await world.client.chat.completions.create(
            model=world.model, messages=MESSAGES, max_tokens=8
        )
    assert (info.value.status_code, info.value.code) == (402, "spend_cap_reached")
    assert "monthly budget" in info.value.message


async def test_losing_redis_rebuilds_the_balance_from_postgres_and_keeps_serving(
    world: World, pool: asyncpg.Pool, redis_client: redis.Redis
) -> None:
    first = await world.client.chat.completions.with_raw_response.create(
        model=world.model, messages=MESSAGES
    )
    charge = int(first.headers["x-tally-charge-nano"])
    await redis_client.flushdb()
    second = await world.client.chat.completions.with_raw_response.create(
        model=world.model, messages=MESSAGES
    )
    snapshot = await LiveBalances(redis_client).snapshot(world.tenant_id)
    assert snapshot is not None
    # The rebuilt balance counts the first request (from its unfolded usage event) and the second.
    assert snapshot.available_nano == 10**12 - charge - int(second.headers["x-tally-charge-nano"])
