"""The money invariants under pressure: no overspend beyond the holds, one usage event per
success, charges equal to the balance drop, and no usage lost when the gateway is killed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import asyncpg
import httpx
import msgspec
import pytest
import redis.asyncio as redis

from tally.invalidation import publish_invalidation
from tally.live_balance import LiveBalances
from tests.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream
from tests.fixtures.gateway import GatewayServer, child_environment, free_port, gateway_settings
from tests.integration.gateway.conftest import make_world
from tests.integration.gateway.test_openai_client import MESSAGES, usage_events

pytestmark = pytest.mark.slow


async def test_500_concurrent_requests_never_overspend_and_charges_equal_the_balance_drop(
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
    gateway_server: GatewayServer,
    fakes: dict[str, FakeOpenAIUpstream],
) -> None:
    fake = fakes["openai"]
    fake.default = Behaviour(latency=0.05, chunks=8)
    body = msgspec.json.encode({"model": "x" * 8, "messages": MESSAGES, "max_tokens": 8})
    # Worst case per request: every body byte an input token (1,000) + 8 output tokens (2,000).
    worst = len(body) * 1_000 + 8 * 2_000
    world = await make_world(pool, gateway_server, fake, model="x" * 8, balance_nano=100 * worst)
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=500)
    async with httpx.AsyncClient(base_url=gateway_server.url, limits=limits, timeout=60) as http:

        async def one() -> httpx.Response:
            return await http.post(
                "/v1/chat/completions",
                content=body,
                headers={"authorization": f"Bearer {world.key}"},
            )

        responses = await asyncio.gather(*(one() for _ in range(500)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 402]
    assert len(ok) + len(refused) == 500, {r.status_code for r in responses}
    assert len(ok) >= 100  # the balance covers 100 worst cases
    assert all(r.json()["error"]["code"] == "insufficient_credits" for r in refused)

    events = await usage_events(pool)
    assert len(events) == len(ok)
    assert {e["request_id"] for e in events} == {r.headers["x-request-id"] for r in ok}
    charges = sum(e["charge_nano"] for e in events)
    assert charges == sum(int(r.headers["x-tally-charge-nano"]) for r in ok)
    snapshot = await LiveBalances(redis_client).snapshot(world.tenant_id)
    assert snapshot is not None
    assert snapshot.holds_nano == 0
    assert snapshot.balance_nano - snapshot.available_nano == charges
    assert charges <= 100 * worst  # never more than the balance
    assert len(fake.requests) == len(ok)  # refused requests never reached the provider
    await world.client.close()


async def test_kill_9_under_load_loses_no_usage_event_of_a_completed_response(
    pool: asyncpg.Pool, redis_client: redis.Redis, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    fake = fakes["openai"]
    fake.default = Behaviour(latency=0.002, chunks=4)
    settings = gateway_settings()
    port = free_port()
    env = child_environment(settings, TALLY_GATEWAY_PORT=str(port))
    child = subprocess.Popen(
        [sys.executable, "-m", "tally.cli", "serve", "gateway"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            for _ in range(200):
                try:
                    if (await http.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)

            class Stub:
                url = ""

                async def refresh(self) -> None:
                    return None

            stub = Stub()
            stub.url = url
            world = await make_world(pool, stub, fake)  # type: ignore[arg-type]
            # As the tenant service does after a catalog change: the gateway reloads.
            await publish_invalidation(redis_client, "model", world.model)
            for _ in range(100):
                warmup = await http.post(
                    "/v1/chat/completions",
                    headers={"authorization": f"Bearer {world.key}"},
                    json={"model": world.model, "messages": MESSAGES},
                )
                if warmup.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            completed: list[str] = []
            stop, enough = asyncio.Event(), asyncio.Event()

            async def client() -> None:
                while not stop.is_set():
                    try:
                        response = await http.post(
                            "/v1/chat/completions",
                            headers={"authorization": f"Bearer {world.key}"},
                            json={"model": world.model, "messages": MESSAGES},
                        )
                    except httpx.TransportError:
                        return
                    if response.status_code == 200:
                        completed.append(response.headers["x-request-id"])
                        if len(completed) >= 300:
                            enough.set()

            clients = [asyncio.create_task(client()) for _ in range(32)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), 20)
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
            stop.set()
            await asyncio.gather(*clients)
            await world.client.close()
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)

    assert len(completed) >= 300
    recorded = {e["request_id"] for e in await usage_events(pool)}
    missing = set(completed) - recorded
    assert not missing, f"{len(missing)} completed responses have no usage event"
