"""The tenant service under test: a real app on the test Postgres and Redis, and people in it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aiohttp
import argon2
import asyncpg
import msgspec
import pytest
import redis.asyncio as redis
from litestar import Litestar
from litestar.testing import AsyncTestClient

from tally.auth import new_signing_key_entry
from tally.config import Settings, get_settings
from tally.crypto import new_key_entry
from tally.events.tenant import Actor
from tally.invalidation import CHANNEL, Invalidation, decode_invalidation
from tenant.app import create_app
from tenant.auth import passwords
from tenant.people.service import people_service
from tenant.runtime import Runtime

JWT_KEYS = new_signing_key_entry("test1")
SECRET_KEY = new_key_entry("k1")
PASSWORD = "correct horse battery staple"


def tenant_settings(**overrides: Any) -> Settings:
    base = msgspec.structs.replace(
        get_settings(),
        jwt_keys=JWT_KEYS,
        secret_key=SECRET_KEY,
        # Fast, deterministic lockouts for the brute-force tests.
        signin_max_failures_per_account=3,
        signin_max_failures_per_address=8,
        signin_backoff_base_seconds=30,
    )
    return msgspec.structs.replace(base, **overrides)


@dataclass
class Api:
    """An HTTP client of the tenant service, and a runtime on the test's own event loop.

    The test client serves the app on an event loop of its own, so direct writes and checks
    go through `runtime` (same services, the test session's pool and Redis client).
    """

    client: AsyncTestClient[Litestar]
    runtime: Runtime

    @staticmethod
    def auth(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers.update(self.auth(token))
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def create_user(
        self, email: str, *, roles: list[str] | None = None, password: str = PASSWORD
    ) -> UUID:
        async with self.runtime.unit(Actor(kind="system", id="test")) as uow:
            row = await people_service.create_user(
                uow, email=email, password=password, platform_roles=roles or []
            )
        user_id: UUID = row["id"]
        return user_id

    async def add_member(self, tenant_id: UUID | str, user_id: UUID, role: str) -> None:
        async with self.runtime.unit(Actor(kind="system", id="test")) as uow:
            await people_service.add_member(uow, UUID(str(tenant_id)), user_id, role)

    async def sign_in(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/auth/sign-in", json={"email": email, "password": password}
        )
        assert response.status_code == 200, response.text
        session: dict[str, Any] = response.json()
        return session

    async def token_for(self, email: str, password: str = PASSWORD) -> str:
        token: str = (await self.sign_in(email, password))["access_token"]
        return token

    async def operator(self, email: str = "op@platform.test") -> str:
        await self.create_user(email, roles=["operator"])
        return await self.token_for(email)

    async def new_tenant(self, operator_token: str, name: str, **fields: Any) -> dict[str, Any]:
        response = await self.call(
            "POST", "/v1/tenants", operator_token, json={"name": name, **fields}
        )
        assert response.status_code == 201, response.text
        tenant: dict[str, Any] = response.json()
        return tenant

    async def tenant_admin(self, tenant_id: str, email: str, role: str = "admin") -> str:
        user_id = await self.create_user(email)
        await self.add_member(tenant_id, user_id, role)
        return await self.token_for(email)


@pytest.fixture(autouse=True)
def _cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """argon2id with the smallest cost: real hashes, without 0.3 s of CPU per sign-in.

    tests/unit/test_passwords.py checks the production parameters themselves.
    """
    fast = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    monkeypatch.setattr(passwords, "_hasher", fast)
    passwords._dummy_hash.cache_clear()


@pytest.fixture
def settings() -> Settings:
    return tenant_settings()


@pytest.fixture
async def api(
    settings: Settings, pool: asyncpg.Pool, redis_client: redis.Redis
) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession() as http, AsyncTestClient(create_app(settings)) as client:
        yield Api(client, Runtime(settings, pool, redis_client, http))


class InvalidationWatch:
    """Collects the cache invalidations published on Redis while a test runs.

    Pub/sub channels span every Redis database, so other test sessions on this machine may
    publish too: tests look for the specific objects they changed, never for silence.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pubsub = client.pubsub()
        self.seen: list[Invalidation] = []

    async def start(self) -> None:
        await self._pubsub.subscribe(CHANNEL)
        # The subscription is active once its confirmation arrives.
        while await self._pubsub.get_message(timeout=1) is None:
            pass

    async def wait_for(
        self, kind: str, object_id: str, *, on_receipt: Any = None, timeout: float = 10
    ) -> Invalidation:
        """The first message naming `object_id`; `on_receipt` runs the moment it arrives."""
        for item in self.seen:
            if item.kind == kind and item.id == object_id:
                return item
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is None:
                continue
            item = decode_invalidation(message["data"])
            self.seen.append(item)
            if item.kind == kind and item.id == object_id:
                if on_receipt is not None:
                    await on_receipt()
                return item
        raise AssertionError(f"no {kind} invalidation for {object_id}; saw {self.seen}")

    async def close(self) -> None:
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]


@pytest.fixture
async def invalidations(redis_client: redis.Redis) -> AsyncIterator[InvalidationWatch]:
    watch = InvalidationWatch(redis_client)
    await watch.start()
    yield watch
    await watch.close()


async def events_of(pool: asyncpg.Pool, *types: str) -> list[dict[str, Any]]:
    """The stored events of these types, oldest first, as JSON objects."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT type, idempotency_key, tenant_id, data::text AS data FROM events"
            " WHERE type = ANY($1) ORDER BY position",
            list(types),
        )
    return [
        {
            **msgspec.json.decode(r["data"]),
            "_key": r["idempotency_key"],
            "_tenant_id": r["tenant_id"],
        }
        for r in rows
    ]


async def count_rows(pool: asyncpg.Pool) -> dict[str, int]:
    """Row counts of every table the tenant service writes, to prove nothing was half-written."""
    tables = [
        "events",
        "tenants",
        "api_keys",
        "provider_credentials",
        "models",
        "model_routes",
        "users",
        "tenant_memberships",
        "invitations",
        "refresh_tokens",
        "tenant_margins",
    ]
    async with pool.acquire() as conn:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}
