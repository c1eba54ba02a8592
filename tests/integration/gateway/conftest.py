"""A real gateway and one fake provider per OpenAI-wire kind, shared by the gateway tests."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import openai
import pytest

from tests.fakes.openai_upstream import PREFIXES, Behaviour, FakeOpenAIUpstream
from tests.fixtures.gateway import (
    GatewayServer,
    LoopThread,
    create_credential,
    create_key,
    create_model,
    create_route,
    create_tenant,
    gateway_settings,
    set_price,
)

OPENAI_WIRE_KINDS = tuple(PREFIXES)


@pytest.fixture(scope="session")
def fake_loop() -> Iterator[LoopThread]:
    thread = LoopThread("fakes")
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def fakes(fake_loop: LoopThread) -> Iterator[dict[str, FakeOpenAIUpstream]]:
    started = {kind: fake_loop.run(FakeOpenAIUpstream(kind).start()) for kind in OPENAI_WIRE_KINDS}
    yield started
    for fake in started.values():
        fake_loop.run(fake.close())


@pytest.fixture(scope="session")
def gateway_server(tally_environment: None, database_url: str) -> Iterator[GatewayServer]:
    # The gateway, the fake providers and the test's clients share this process's GIL: when
    # a test fires hundreds of requests at once, a provider connect's wall time is the event
    # loop's backlog (3-5 s for the 500-request test on a busy machine), not the network.
    server = GatewayServer(gateway_settings(gateway_connect_timeout_s=60.0))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
async def _fresh_gateway(
    clean_state: None, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> None:
    for fake in fakes.values():
        fake.script.clear()
        fake.requests.clear()
        fake.default = Behaviour()
        fake.api_key = "sk-fake"
    await gateway_server.refresh()


@dataclass
class World:
    """One tenant with a key, a model routed to a fake provider, and a price."""

    tenant_id: uuid.UUID
    key_id: uuid.UUID
    key: str
    model: str
    route_id: uuid.UUID
    credential_id: uuid.UUID
    fake: FakeOpenAIUpstream
    client: openai.AsyncOpenAI


async def make_world(
    pool: asyncpg.Pool,
    server: GatewayServer,
    fake: FakeOpenAIUpstream,
    *,
    model: str | None = None,
    mode: str = "prepaid",
    balance_nano: int | None = 10**12,
    max_output_tokens: int | None = None,
    **key_options: object,
) -> World:
    model = model or f"model-{uuid.uuid4().hex[:8]}"
    tenant_id = await create_tenant(pool, mode=mode, balance_nano=balance_nano)
    key_id, key = await create_key(pool, tenant_id, **key_options)  # type: ignore[arg-type]
    credential_id = await create_credential(pool, kind=fake.kind, base_url=fake.base_url)
    await create_model(pool, model, max_output_tokens=max_output_tokens)
    route_id = await create_route(pool, model, credential_id)
    await set_price(pool, model)
    await server.refresh()
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
    return World(tenant_id, key_id, key, model, route_id, credential_id, fake, client)


@pytest.fixture
async def world(
    pool: asyncpg.Pool, gateway_server: GatewayServer, fakes: dict[str, FakeOpenAIUpstream]
) -> AsyncIterator[World]:
    w = await make_world(pool, gateway_server, fakes["openai"])
    yield w
    await w.client.close()
