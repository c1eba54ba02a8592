"""The control plane drives the real gateway: what the tenant service writes and announces is
what the gateway reads, decrypts and obeys.

Everything is set up through the tenant service's HTTP API (no rows written by hand except the
price, which is billing's); the gateway learns of each change only from the invalidations the
service publishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import asyncpg
import openai
import pytest

from tally.config import Settings
from tests.fakes.openai_upstream import FakeOpenAIUpstream
from tests.fixtures.gateway import (
    TEST_SECRET_KEY,
    GatewayServer,
    LoopThread,
    gateway_settings,
    set_price,
)
from tests.fixtures.waiting import eventually
from tests.integration.tenant.conftest import Api, tenant_settings


@pytest.fixture
def settings() -> Settings:
    # The gateway must open the secrets this service seals: one key ring for both.
    return tenant_settings(secret_key=TEST_SECRET_KEY)


@pytest.fixture(scope="module")
def upstream_loop() -> Iterator[LoopThread]:
    thread = LoopThread("tenant-gateway-fakes")
    yield thread
    thread.stop()


@pytest.fixture
def upstream(upstream_loop: LoopThread) -> Iterator[FakeOpenAIUpstream]:
    fake = upstream_loop.run(
        FakeOpenAIUpstream("openai", api_key="sk-upstream-real-key-1234").start()
    )
    yield fake
    upstream_loop.run(fake.close())


@pytest.fixture
async def gateway(clean_state: None) -> AsyncIterator[GatewayServer]:
    server = await asyncio.to_thread(GatewayServer, gateway_settings())
    yield server
    await asyncio.to_thread(server.stop)


async def test_a_tenant_set_up_through_the_tenant_service_is_served_by_the_gateway(
    api: Api, pool: asyncpg.Pool, gateway: GatewayServer, upstream: FakeOpenAIUpstream
) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme", mode="metered")
    credential = await api.call(
        "POST",
        "/v1/providers",
        op,
        json={
            "kind": "openai",
            "api_key": "sk-upstream-real-key-1234",
            "base_url": upstream.base_url,
        },
    )
    assert credential.status_code == 201
    assert (
        await api.call("POST", "/v1/catalog/models", op, json={"name": "acme-gpt"})
    ).status_code == 201
    route = await api.call(
        "POST",
        "/v1/catalog/routes",
        op,
        json={"model": "acme-gpt", "provider": "openai", "upstream_model": "gpt-x"},
    )
    assert route.status_code == 201
    await set_price(pool, "acme-gpt")
    admin = await api.tenant_admin(tenant["id"], "admin@acme.test")
    key = (
        await api.call("POST", f"/v1/tenants/{tenant['id']}/api-keys", admin, json={"name": "app"})
    ).json()

    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=key["key"], max_retries=0)
    try:

        async def answers() -> bool:
            try:
                await client.chat.completions.create(
                    model="acme-gpt", messages=[{"role": "user", "content": "hi"}]
                )
            except openai.APIStatusError:
                return False
            return True

        # The catalog reloads on the service's model/credential invalidations.
        await eventually(answers, "the gateway seeing the new model and credential", timeout=5.0)
        sent = upstream.requests[-1]
        assert sent.body["model"] == "gpt-x"  # the route's upstream model, with the sealed key

        # Revoking through the tenant service stops the key at the gateway.
        revoked = await api.call(
            "POST", f"/v1/tenants/{tenant['id']}/api-keys/{key['id']}/revoke", admin
        )
        assert revoked.status_code == 200

        async def refused() -> bool:
            try:
                await client.models.list()
            except openai.AuthenticationError:
                return True
            return False

        await eventually(refused, "the gateway seeing the revocation", timeout=5.0)

        # A suspended tenant's other keys stop too.
        second = (
            await api.call("POST", f"/v1/tenants/{tenant['id']}/api-keys", admin, json={})
        ).json()
        client2 = openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key=second["key"], max_retries=0
        )
        await client2.models.list()
        await api.call("POST", f"/v1/tenants/{tenant['id']}/suspend", op)

        async def suspended() -> bool:
            try:
                await client2.models.list()
            except openai.APIStatusError as exc:
                return exc.status_code in (401, 403)
            return False

        await eventually(suspended, "the gateway seeing the suspension", timeout=5.0)
        await client2.close()
    finally:
        await client.close()
