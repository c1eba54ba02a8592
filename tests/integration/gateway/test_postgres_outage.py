"""Postgres out of reach: the gateway refuses paid work with 503, never serves unmetered, and
serves again once Postgres is back. The outage is real: the gateway's only route to Postgres is
a TCP relay that the test cuts."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import openai
import pytest
import redis.asyncio as redis

from tally.live_balance import LiveBalances
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.fixtures.gateway import GatewayServer, LoopThread, gateway_settings
from tests.integration.gateway.conftest import World, make_world
from tests.integration.gateway.test_openai_client import MESSAGES, usage_events


class Relay:
    """A TCP relay to Postgres that can be cut (every connection dropped, new ones refused)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.stalled = False  # while set, bytes are swallowed: Postgres seems to hang

    async def open(self, port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if not self.stalled:
                        dst.write(data)
                        await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()


@contextlib.asynccontextmanager
async def gateway_behind_relay(
    pool: asyncpg.Pool,
    fakes: dict[str, FakeOpenAIUpstream],
    fake_loop: LoopThread,
    database_url: str,
    *,
    append_timeout_s: float,
) -> AsyncIterator[tuple[Relay, World]]:
    """A gateway whose only route to Postgres is a relay, and a world that made one request."""
    # The relay runs on its own loop: the gateway starts while this test's loop waits for it.
    relay = Relay(5432)
    fake_loop.run(relay.open())
    settings = gateway_settings(
        database_url=database_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}"),
        gateway_append_timeout_s=append_timeout_s,
    )
    if settings.database_url == database_url:
        pytest.skip("the test database is not on 127.0.0.1:5432")
    server = GatewayServer(settings)
    try:
        world = await make_world(pool, server, fakes["openai"])
        await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
        assert len(await usage_events(pool)) == 1
        yield relay, world
        await world.client.close()
    finally:
        server.stop()
        with contextlib.suppress(Exception):
            fake_loop.run(relay.cut())


async def served_again(world: World) -> None:
    """Paid work resumes once the gateway sees Postgres back (however slow the machine is);
    until then it is refused with 503."""
    deadline = time.monotonic() + 120
    while True:
        try:
            await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
            return
        except openai.APIStatusError as exc:
            refused_with = exc.status_code
        assert refused_with == 503
        assert time.monotonic() < deadline, "paid work did not resume"
        await asyncio.sleep(0.1)


async def test_without_postgres_paid_work_is_refused_and_resumes_after(
    pool: asyncpg.Pool,
    redis_client: redis.Redis,
    fakes: dict[str, FakeOpenAIUpstream],
    fake_loop: LoopThread,
    database_url: str,
) -> None:
    # A generous timeout: a commit on a loaded machine must not time out while Postgres is up
    # (a cut connection fails at once, without waiting for it).
    async with gateway_behind_relay(
        pool, fakes, fake_loop, database_url, append_timeout_s=15.0
    ) as (relay, world):
        await fake_loop.arun(relay.cut())
        # The request that finds Postgres gone is not answered with an unrecorded result.
        with pytest.raises(openai.APIStatusError) as info:
            await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
        assert info.value.status_code == 503
        sent = len(world.fake.requests)
        # From then on, paid work is refused before any provider call.
        with pytest.raises(openai.APIStatusError) as again:
            await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
        assert again.value.status_code == 503
        assert len(world.fake.requests) == sent
        assert len(await usage_events(pool)) == 1
        snapshot = await LiveBalances(redis_client).snapshot(world.tenant_id)
        assert snapshot is not None
        # Only the recorded request is counted against the balance; nothing is held.
        assert snapshot.holds_nano == 0
        assert snapshot.unfolded_nano == (await usage_events(pool))[0]["charge_nano"]

        await fake_loop.arun(relay.open(relay.port))
        await served_again(world)
        assert len(await usage_events(pool)) == 2


async def test_a_stalled_postgres_gets_503_after_the_append_timeout_not_a_hang(
    pool: asyncpg.Pool,
    fakes: dict[str, FakeOpenAIUpstream],
    fake_loop: LoopThread,
    database_url: str,
) -> None:
    async with gateway_behind_relay(pool, fakes, fake_loop, database_url, append_timeout_s=5.0) as (
        relay,
        world,
    ):
        # Postgres stops answering without closing anything: only the timeout ends the wait.
        relay.stalled = True
        started = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            await world.client.chat.completions.create(model=world.model, messages=MESSAGES)
        assert info.value.status_code == 503
        assert time.monotonic() - started >= 5.0
        # The swallowed INSERT never reaches Postgres: the stalled connections are dropped.
        await fake_loop.arun(relay.cut())
        relay.stalled = False
        assert len(await usage_events(pool)) == 1

        await fake_loop.arun(relay.open(relay.port))
        await served_again(world)
        assert len(await usage_events(pool)) == 2
