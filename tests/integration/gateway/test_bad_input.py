"""Bad input to every endpoint: a precise OpenAI-shaped 4xx, nothing sent upstream, nothing held
or charged."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from tally.live_balance import LiveBalances
from tests.fixtures.gateway import GatewayServer
from tests.integration.gateway.conftest import World
from tests.integration.gateway.test_auth_and_admission import assert_openai_error
from tests.integration.gateway.test_openai_client import MESSAGES, usage_events

CHAT = "/v1/chat/completions"


def cases(model: str) -> list[tuple[str, bytes, int, str | None]]:
    def j(body: object) -> bytes:
        import msgspec

        return msgspec.json.encode(body)

    return [
        (CHAT, b'{"model": "m", "messages": [', 400, "invalid_request"),
        (CHAT, b"[1, 2]", 400, "invalid_request"),
        (CHAT, b"", 400, "invalid_request"),
        (CHAT, j({"model": model, "messages": "hello"}), 400, "invalid_request"),
        (CHAT, j({"model": model, "messages": []}), 400, "invalid_request"),
        (CHAT, j({"model": 7, "messages": MESSAGES}), 400, "invalid_request"),
        (CHAT, j({"messages": MESSAGES}), 400, "invalid_request"),
        (CHAT, j({"model": model, "messages": MESSAGES, "max_tokens": 10**12}), 400, None),
        (CHAT, j({"model": model, "messages": MESSAGES, "max_tokens": -1}), 400, None),
        (CHAT, j({"model": model, "messages": MESSAGES, "max_tokens": "many"}), 400, None),
        (CHAT, j({"model": model, "messages": MESSAGES, "stream": "yes"}), 400, None),
        (CHAT, j({"model": model, "messages": [{"content": "no role"}]}), 400, None),
        (CHAT, j({"model": "no-such-model", "messages": MESSAGES}), 404, "model_not_found"),
        (CHAT, b'{"model": "\xff\xfe", "messages": []}', 400, "invalid_request"),
        ("/v1/completions", j({"model": model}), 400, "invalid_request"),
        ("/v1/completions", j({"model": model, "prompt": [{"x": 1}]}), 400, "invalid_request"),
        ("/v1/embeddings", j({"model": model, "input": []}), 400, "invalid_request"),
        ("/v1/embeddings", j({"model": model, "input": 3.5}), 400, "invalid_request"),
        ("/v1/images/generations", j({"model": model, "prompt": ""}), 400, "invalid_request"),
        ("/v1/images/generations", j({"model": model, "prompt": "x", "n": 99}), 400, None),
        ("/v1/nothing-here", j({}), 404, "unknown_url"),
    ]


async def test_bad_input_to_every_endpoint_gets_a_precise_4xx_and_costs_nothing(
    world: World, pool: asyncpg.Pool, redis_client: redis.Redis, gateway_server: GatewayServer
) -> None:
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        for path, body, status, code in cases(world.model):
            response = await http.post(
                path,
                content=body,
                headers={
                    "authorization": f"Bearer {world.key}",
                    "content-type": "application/json",
                },
            )
            error = assert_openai_error(response, status, code)
            assert error["type"] == "invalid_request_error", (path, body, error)
    assert world.fake.requests == []
    assert await usage_events(pool) == []
    snapshot = await LiveBalances(redis_client).snapshot(world.tenant_id)
    assert snapshot is None or (snapshot.holds_nano, snapshot.unfolded_nano) == (0, 0)


async def test_validation_errors_name_the_offending_field(
    world: World, gateway_server: GatewayServer
) -> None:
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        response = await http.post(
            CHAT,
            headers={"authorization": f"Bearer {world.key}"},
            json={"model": world.model, "messages": MESSAGES, "max_tokens": "many"},
        )
    error = assert_openai_error(response, 400, "invalid_request")
    assert error["param"] == "max_tokens"
    assert "Expected `int" in error["message"]


async def test_max_tokens_above_the_models_cap_is_refused(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict
) -> None:
    from tests.integration.gateway.conftest import make_world

    world = await make_world(pool, gateway_server, fakes["openai"], max_output_tokens=100)
    import openai

    with pytest.raises(openai.BadRequestError, match="at most 100 output tokens"):
        await world.client.chat.completions.create(
            model=world.model, messages=MESSAGES, max_tokens=101
        )
    await world.client.close()


async def test_a_ten_megabyte_body_gets_413_without_being_read_whole(
    world: World, gateway_server: GatewayServer
) -> None:
    huge = (
        b'{"model": "m", "messages": [{"role": "user", "content": "' + b"a" * (10 * 2**20) + b'"}]}'
    )
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        response = await http.post(
            CHAT, content=huge, headers={"authorization": f"Bearer {world.key}"}
        )
    assert_openai_error(response, 413, "request_too_large")
    assert world.fake.requests == []


async def test_a_wrong_method_gets_405(world: World, gateway_server: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway_server.url) as http:
        response = await http.get(CHAT, headers={"authorization": f"Bearer {world.key}"})
    assert_openai_error(response, 405, "method_not_allowed")
