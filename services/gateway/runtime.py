"""The gateway process's long-lived parts, started and stopped with the app.

One pooled HTTP session, one group-commit appender, the caches, and the listener that keeps the
caches honest: it subscribes to `tally.invalidation.CHANNEL` (keys, tenants, credentials,
models, prices) and to the cooldown channel. While it is not subscribed the key cache is
bypassed, so a revocation published during a Redis hiccup is still honoured.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import redis.asyncio as redis
from litestar import Litestar

from gateway import metrics
from gateway.auth import KeyCache
from gateway.catalog import CatalogCache
from gateway.metering import Meter, PostgresHealth
from gateway.prices import PriceCache
from gateway.service import Gateway
from gateway.upstream import COOLDOWN_CHANNEL, Cooldowns, Upstream
from tally.config import Settings
from tally.crypto import load_key_ring
from tally.db import create_pool
from tally.eventlog import GroupCommitAppender
from tally.invalidation import CHANNEL, Invalidation, decode_invalidation
from tally.log import get_logger

log = get_logger(__name__)


class InvalidationListener:
    def __init__(self, client: redis.Redis, gateway: Gateway, cooldowns: Cooldowns) -> None:
        self._redis = client
        self._gateway = gateway
        self._cooldowns = cooldowns
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(CHANNEL, COOLDOWN_CHANNEL)
                # Anything may have changed while we were not listening.
                self._gateway.keys.clear()
                self._gateway.prices.clear()
                self._gateway.catalog.invalidate()
                await self._cooldowns.seed()
                self._gateway.keys.trusted = True
                self.subscribed.set()
                backoff = 0.1
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
                    if message is None or message.get("type") != "message":
                        continue
                    self._dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("invalidation listener lost redis; caches bypassed", error=str(exc))
            finally:
                self._gateway.keys.trusted = False
                self._gateway.keys.clear()
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        try:
            if channel == COOLDOWN_CHANNEL:
                self._cooldowns.on_message(message["data"])
                return
            self.apply(decode_invalidation(message["data"]))
        except Exception as exc:
            log.warning("bad invalidation message", error=str(exc))

    def apply(self, invalidation: Invalidation) -> None:
        gateway = self._gateway
        if invalidation.kind == "api_key":
            gateway.keys.forget_key(invalidation.id)
        elif invalidation.kind == "tenant":
            gateway.keys.forget_tenant(invalidation.id)
            gateway.prices.clear()  # tenant margins live in the price book too
        elif invalidation.kind in ("credential", "model"):
            gateway.catalog.invalidate()
        elif invalidation.kind == "prices":
            gateway.prices.clear()


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Pool reset that sends nothing (asyncpg still rolls back an open transaction itself)."""


@contextlib.asynccontextmanager
async def gateway_runtime(app: Litestar) -> AsyncIterator[None]:
    """Build the gateway on the pool and Redis client `tally.http` opened."""
    settings: Settings = app.state.settings
    pool = app.state.pool
    client: redis.Redis = app.state.redis
    ring = load_key_ring(settings)
    keys = KeyCache(
        pool,
        ttl_s=settings.gateway_cache_ttl_s,
        tenant_rpm=settings.gateway_tenant_rpm,
        tenant_tpm=settings.gateway_tenant_tpm,
    )
    catalog = CatalogCache(pool, ring, ttl_s=settings.gateway_cache_ttl_s)
    prices = PriceCache(pool, ttl_s=settings.gateway_cache_ttl_s)
    # The usage events get their own small pool whose connections skip asyncpg's reset query
    # on release (a round trip per batch): the appender leaves no session state behind.
    # Its statement and connect timeouts bound how long a finished request waits for its
    # usage event (a stalled Postgres): the request then gets 503, not a hang.
    append_timeout = settings.gateway_append_timeout_s
    append_pool = await create_pool(
        settings,
        min_size=1,
        max_size=4,
        reset=_keep_session,
        command_timeout=append_timeout,
        timeout=append_timeout,
    )
    appender = GroupCommitAppender(
        append_pool,
        max_batch=settings.event_batch_max,
        on_batch=metrics.append_batch,
        # The fold learns of new usage within 20 ms, and is woken at most 50 times a second
        # however many requests commit.
        notify_interval=0.02,
    )
    health = PostgresHealth(pool)
    meter = Meter(
        pool=pool,
        redis_client=client,
        appender=appender,
        health=health,
        fold_shards=settings.fold_shards,
        hold_ttl_s=settings.gateway_hold_ttl_s,
    )
    cooldowns = Cooldowns(client, default_s=settings.gateway_cooldown_s)
    upstream = Upstream(
        catalog=catalog,
        cooldowns=cooldowns,
        redis_client=client,
        pool=pool,
        connect_timeout_s=settings.gateway_connect_timeout_s,
        read_timeout_s=settings.gateway_read_timeout_s,
        max_attempts=settings.gateway_max_attempts,
    )
    gateway = Gateway(
        keys=keys,
        catalog=catalog,
        prices=prices,
        meter=meter,
        upstream=upstream,
        default_max_output_tokens=settings.gateway_default_max_output_tokens,
        image_part_tokens=settings.gateway_image_part_tokens,
        disconnect_drain_s=settings.gateway_disconnect_drain_s,
    )
    try:
        await catalog.reload()
    except Exception as exc:  # start anyway; the first request retries the load
        log.warning("catalog not loaded at start", error=str(exc))
    listener = InvalidationListener(client, gateway, cooldowns)
    listener.start()
    app.state.gateway = gateway
    app.state.invalidation_listener = listener
    fast_path = app.state.get("fast_path")
    if fast_path is not None and settings.gateway_fast_path:
        fast_path.gateway = gateway
    try:
        yield
    finally:
        if fast_path is not None:
            fast_path.gateway = None
        await listener.stop()
        await appender.close()
        await append_pool.close()
        await upstream.close()
        await health.close()
        await meter.close()
