"""SIGTERM under load: `tally serve gateway` stops accepting, finishes what it started (streams
included), flushes its group commit and exits 0; every completed response has exactly one usage
event and nothing is charged twice."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import tempfile

import asyncpg
import httpx
import pytest
import redis.asyncio as redis

from tally.invalidation import publish_invalidation
from tests.fakes.openai_upstream import Behaviour, FakeOpenAIUpstream
from tests.fixtures.gateway import child_environment, free_port, gateway_settings
from tests.integration.gateway.conftest import make_world
from tests.integration.gateway.test_openai_client import MESSAGES, usage_events

pytestmark = pytest.mark.slow

# uvicorn's timeout_graceful_shutdown in `tally serve`, plus room for the lifespan shutdown.
GRACE_S = 30 + 15


class Load:
    """What the clients saw: completed ids, and the responses that started but did not finish."""

    def __init__(self) -> None:
        self.completed: list[str] = []
        self.streams_completed: list[str] = []
        self.in_body: set[str] = set()  # 200 received, body not finished yet
        self.cut: list[tuple[str, str]] = []  # (request id, what went wrong) after a 200
        self.statuses: collections.Counter[int] = collections.Counter()


async def _wait_until_serving(http: httpx.AsyncClient) -> None:
    for _ in range(200):
        try:
            if (await http.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("the gateway did not start")


async def test_sigterm_under_load_finishes_in_flight_requests_and_records_each_once(
    pool: asyncpg.Pool, redis_client: redis.Redis, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    fake = fakes["openai"]
    # Slow enough that SIGTERM always lands with requests and streams half done.
    fake.default = Behaviour(latency=0.05, chunk_delay=0.05, chunks=10)
    settings = gateway_settings()
    port = free_port()
    env = child_environment(settings, TALLY_GATEWAY_PORT=str(port))
    stderr = tempfile.TemporaryFile()
    child = subprocess.Popen(
        [sys.executable, "-m", "tally.cli", "serve", "gateway"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    load = Load()
    in_flight_at_sigterm: set[str] = set()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            await _wait_until_serving(http)

            class Stub:
                url = ""

                async def refresh(self) -> None:
                    return None

            stub = Stub()
            stub.url = url
            world = await make_world(pool, stub, fake)  # type: ignore[arg-type]
            await publish_invalidation(redis_client, "model", world.model)
            headers = {"authorization": f"Bearer {world.key}"}
            for _ in range(100):
                warmup = await http.post(
                    "/v1/chat/completions",
                    headers=headers,
                    json={"model": world.model, "messages": MESSAGES},
                )
                if warmup.status_code == 200:
                    load.completed.append(warmup.headers["x-request-id"])
                    break
                await asyncio.sleep(0.05)
            terminated = asyncio.Event()

            async def plain() -> None:
                response = await http.post(
                    "/v1/chat/completions",
                    headers=headers,
                    json={"model": world.model, "messages": MESSAGES},
                )
                load.statuses[response.status_code] += 1
                if response.status_code == 200:
                    load.completed.append(response.headers["x-request-id"])

            async def streamed() -> None:
                body = {
                    "model": world.model,
                    "messages": MESSAGES,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                async with http.stream(
                    "POST", "/v1/chat/completions", headers=headers, json=body
                ) as response:
                    load.statuses[response.status_code] += 1
                    if response.status_code != 200:
                        await response.aread()
                        return
                    request_id = response.headers["x-request-id"]
                    load.in_body.add(request_id)
                    done = False
                    try:
                        async for line in response.aiter_lines():
                            if line.strip() == "data: [DONE]":
                                done = True
                    except httpx.TransportError as exc:
                        load.cut.append((request_id, repr(exc)))
                        return
                    finally:
                        load.in_body.discard(request_id)
                    if done:
                        load.completed.append(request_id)
                        load.streams_completed.append(request_id)
                    else:
                        load.cut.append((request_id, "stream ended without [DONE]"))

            async def client(n: int) -> None:
                while True:
                    try:
                        await (streamed() if n % 2 else plain())
                    except httpx.TransportError:
                        # Refused or reset before a response: the server stopped accepting.
                        if terminated.is_set():
                            return
                        raise

            clients = [asyncio.create_task(client(n)) for n in range(24)]
            # SIGTERM once there is history to check and streams are half way through.
            for _ in range(600):
                if len(load.completed) >= 60 and len(load.in_body) >= 4:
                    break
                await asyncio.sleep(0.01)
            assert len(load.in_body) >= 4, "no stream was in flight to test"
            in_flight_at_sigterm = set(load.in_body)
            terminated.set()
            os.killpg(child.pid, signal.SIGTERM)
            await asyncio.gather(*clients)
            returncode = await asyncio.to_thread(child.wait, GRACE_S)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
        stderr.seek(0)
        log_tail = stderr.read().decode(errors="replace")[-4000:]
        stderr.close()

    assert returncode == 0, f"exit {returncode}; stderr:\n{log_tail}"
    assert not load.cut, f"responses cut after their 200: {load.cut[:5]}"
    # The streams in flight at SIGTERM were finished, not cut.
    assert in_flight_at_sigterm <= set(load.streams_completed)
    assert set(load.statuses) <= {200}, load.statuses

    events = await usage_events(pool)
    ids = [e["request_id"] for e in events]
    twice = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert not twice, f"charged twice: {twice[:5]}"
    missing = set(load.completed) - set(ids)
    assert not missing, f"{len(missing)} completed responses have no usage event"
    await world.client.close()
