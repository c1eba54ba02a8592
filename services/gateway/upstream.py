"""Calling providers: one pooled HTTP client per process (`gateway.http_client`), failover
and shared cooldowns.

A route that fails with a connect error, a timeout, 429 or 5xx is put in cooldown (its
Retry-After, or `gateway_cooldown_s`) and the request moves to the next route. Cooldowns are
shared: the failing process sets a Redis key with a TTL and publishes it; every process keeps
the set in memory (fed by pub/sub, seeded from Redis at start), so choosing a route costs no
round trip. A credential the provider refuses (401/403) is disabled and an event records it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from uuid import UUID

import msgspec
import redis.asyncio as redis

from gateway import metrics, repository
from gateway.catalog import CatalogCache, ModelEntry, Route, order_routes
from gateway.errors import UpstreamFailed
from gateway.http_client import HttpClient, Response
from gateway.providers.base import UnsupportedFeature, UpstreamError, UpstreamRequest
from tally.invalidation import publish_invalidation
from tally.log import get_logger

log = get_logger(__name__)

COOLDOWN_CHANNEL = "tally:gateway:cooldown"
COOLDOWN_KEY = "tally:cooldown:"


class CooldownMessage(msgspec.Struct, frozen=True):
    route_id: str
    seconds: float


class Cooldowns:
    def __init__(self, client: redis.Redis, *, default_s: float) -> None:
        self._redis = client
        self._default = default_s
        self._until: dict[UUID, float] = {}

    def cooling(self) -> set[UUID]:
        if not self._until:
            return set()
        now = time.monotonic()
        expired = [r for r, until in self._until.items() if until <= now]
        for route_id in expired:
            del self._until[route_id]
        return set(self._until)

    def note(self, route_id: UUID, seconds: float) -> None:
        self._until[route_id] = max(self._until.get(route_id, 0.0), time.monotonic() + seconds)

    async def start(self, route_id: UUID, seconds: float | None) -> None:
        """Cool `route_id` down here and in every other gateway process."""
        seconds = self._default if seconds is None else min(max(seconds, 0.0), 3600.0)
        if seconds <= 0:
            return
        self.note(route_id, seconds)
        try:
            await self._redis.set(COOLDOWN_KEY + str(route_id), b"1", px=int(seconds * 1000))
            await self._redis.publish(
                COOLDOWN_CHANNEL, msgspec.json.encode(CooldownMessage(str(route_id), seconds))
            )
        except (redis.RedisError, OSError) as exc:
            log.warning("cooldown not shared", error=str(exc))

    def on_message(self, data: bytes) -> None:
        message = msgspec.json.decode(data, type=CooldownMessage)
        self.note(UUID(message.route_id), message.seconds)

    async def seed(self) -> None:
        """Cooldowns set by other processes before this one started."""
        async for key in self._redis.scan_iter(match=COOLDOWN_KEY + "*", count=500):
            ttl = await self._redis.pttl(key)
            if ttl and ttl > 0:
                name = key.decode() if isinstance(key, bytes) else str(key)
                self.note(UUID(name.removeprefix(COOLDOWN_KEY)), ttl / 1000)


class Attempt(msgspec.Struct):
    """How the call went: the route that answered and the time spent waiting on upstreams."""

    route: Route | None = None
    upstream_s: float = 0.0


def _status_of_last(error: UpstreamError | None) -> int:
    if error is None:
        return 502
    if error.status == 429:
        return 429
    if error.status in (408, 504):
        return 504
    return 502


class Upstream:
    def __init__(
        self,
        *,
        catalog: CatalogCache,
        cooldowns: Cooldowns,
        redis_client: redis.Redis,
        pool: object,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_attempts: int,
    ) -> None:
        self.catalog = catalog
        self.cooldowns = cooldowns
        self._redis = redis_client
        self._pool = pool
        self.max_attempts = max_attempts
        # Connections are opened on first use, on the loop of the request that needs them.
        self.http = HttpClient(connect_timeout_s=connect_timeout_s, read_timeout_s=read_timeout_s)
        self._background: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.http.close()

    async def send(
        self,
        model: ModelEntry,
        build: Callable[[Route], UpstreamRequest],
        attempt: Attempt,
    ) -> Response:
        """The first successful (status < 400) upstream response, trying routes in order.

        The caller reads and releases the response. Raises UpstreamFailed when every route
        failed, or the provider's own 4xx (the request's fault) without trying others.
        """
        routes = order_routes(
            [r for r in model.routes if r.credential.id not in self.catalog.refused],
            self.cooldowns.cooling(),
        )
        if not routes:
            raise UpstreamFailed(
                f"The model '{model.name}' has no working provider route.",
                status=503,
                code="no_route",
            )
        last: UpstreamError | None = None
        unsupported: UnsupportedFeature | None = None
        tried = 0
        failed_kind: str | None = None  # provider kind of the last attempt, if it failed
        for route in routes:
            if tried >= self.max_attempts:
                break
            try:
                request = build(route)
            except UnsupportedFeature as exc:
                unsupported = exc
                continue
            except UpstreamError as exc:
                last = exc
                if exc.credential_invalid:
                    self._refuse_credential(route, exc)
                continue
            tried += 1
            kind = route.credential.kind
            if failed_kind is not None:
                metrics.failover(failed_kind)
            started = time.perf_counter()
            try:
                response = await self.http.request(
                    request.method, request.url, request.headers, request.body
                )
            except (TimeoutError, OSError) as exc:
                elapsed = time.perf_counter() - started
                attempt.upstream_s += elapsed
                metrics.upstream_attempt(kind, elapsed)
                timed_out = isinstance(exc, TimeoutError)
                metrics.upstream_error(kind, "timeout" if timed_out else "unreachable")
                failed_kind = kind
                what = "timed out" if timed_out else "could not be reached"
                last = UpstreamError(
                    504 if timed_out else 502,
                    f"The provider {what} ({type(exc).__name__}).",
                    code="upstream_unreachable",
                )
                log.warning("upstream failed", route=str(route.route_id), error=repr(exc))
                await self.cooldowns.start(route.route_id, None)
                continue
            if response.status < 400:
                elapsed = time.perf_counter() - started
                attempt.upstream_s += elapsed
                metrics.upstream_attempt(kind, elapsed)
                attempt.route = route
                return response
            try:
                body = await response.read()
            except (TimeoutError, OSError):
                body = b""
            finally:
                response.release()
            elapsed = time.perf_counter() - started
            attempt.upstream_s += elapsed
            metrics.upstream_attempt(kind, elapsed)
            metrics.upstream_error(kind, metrics.error_kind(response.status))
            failed_kind = kind
            error = route.adapter.error(response.status, response.headers, body)
            log.warning(
                "upstream error",
                route=str(route.route_id),
                status=response.status,
                message=error.message[:200],
            )
            if error.credential_invalid:
                self._refuse_credential(route, error)
                last = error
                continue
            if error.retryable:
                await self.cooldowns.start(route.route_id, error.retry_after)
                last = error
                continue
            # The request's own fault: another provider would refuse it too.
            raise UpstreamFailed(
                error.message,
                status=error.status if 400 <= error.status < 500 else 502,
                code=error.code or "upstream_error",
                error_type=(
                    error.type if error.type != "upstream_error" else "invalid_request_error"
                ),
            )
        if tried == 0 and unsupported is not None:
            raise unsupported
        status = _status_of_last(last)
        message = last.message if last else "No provider route could serve the request."
        raise UpstreamFailed(
            f"All provider routes failed; last error: {message}",
            status=status,
            code="upstream_rate_limited" if status == 429 else "upstream_error",
        )

    def _refuse_credential(self, route: Route, error: UpstreamError) -> None:
        """Stop using a credential the provider refused, here at once and everywhere soon."""
        credential = route.credential
        if credential.id in self.catalog.refused:
            return
        self.catalog.refused.add(credential.id)
        task = asyncio.get_running_loop().create_task(self._disable(route, error))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _disable(self, route: Route, error: UpstreamError) -> None:
        credential = route.credential
        reason = f"provider answered {error.status}: {error.message[:200]}"
        try:
            async with self._pool.acquire() as conn:  # type: ignore[attr-defined]
                changed = await repository.disable_credential(
                    conn, credential.id, reason=reason, upstream_status=error.status
                )
            if changed:
                log.error("credential disabled", credential=credential.name, status=error.status)
                await publish_invalidation(self._redis, "credential", str(credential.id))
        except Exception as exc:
            log.error("could not disable credential", credential=credential.name, error=str(exc))
