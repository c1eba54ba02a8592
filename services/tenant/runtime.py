"""What the tenant service's logic runs with, for HTTP requests and CLI commands alike.

The app builds one `Runtime` at start-up from the shared pool and Redis client; each CLI command
builds its own. Services take the pieces they need from it, so the HTTP API and the CLI go
through exactly the same code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import cached_property
from typing import Any

import aiohttp
import redis.asyncio as redis
from litestar.datastructures import State

from tally.auth import Principal, SigningKeys, load_signing_keys
from tally.config import Settings
from tally.crypto import KeyRing, load_key_ring
from tally.db import Pool, create_pool
from tally.events.tenant import Actor
from tenant.auth.oidc import OidcVerifier
from tenant.unit_of_work import UnitOfWork, unit_of_work


def actor_of(principal: Principal) -> Actor:
    return Actor(kind="user", id=str(principal.user_id))


class Runtime:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        redis_client: redis.Redis | None,
        http: aiohttp.ClientSession,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis_client
        self.http = http
        self.oidc = (
            OidcVerifier(settings, http)
            if settings.oidc_issuer and settings.oidc_client_id
            else None
        )

    @cached_property
    def key_ring(self) -> KeyRing:
        """The provider-secret key ring (`TALLY_SECRET_KEY`), loaded on first use."""
        return load_key_ring(self.settings)

    @cached_property
    def signing_keys(self) -> SigningKeys:
        """The access-token signing keys (`TALLY_JWT_KEYS`), loaded on first use."""
        return load_signing_keys(self.settings)

    def unit(self, actor: Actor | Principal) -> AbstractAsyncContextManager[UnitOfWork]:
        """A unit of work on behalf of `actor` (a signed-in person or the CLI)."""
        if isinstance(actor, Principal):
            actor = actor_of(actor)
        return unit_of_work(self.pool, self.redis, actor)


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    """A runtime with its own small pool and Redis client, for one CLI command."""
    pool = await create_pool(settings, min_size=1, max_size=2)
    client: redis.Redis | None = (
        redis.from_url(settings.redis_url)  # type: ignore[no-untyped-call]
        if settings.redis_url
        else None
    )
    try:
        async with aiohttp.ClientSession() as http:
            yield Runtime(settings, pool, client, http)
    finally:
        if client is not None:
            await client.aclose()
        await pool.close()


def provide_runtime(state: State) -> Runtime:
    """Litestar dependency: the app's runtime (built by the tenant app's lifespan)."""
    runtime: Any = state.runtime
    assert isinstance(runtime, Runtime)
    return runtime
