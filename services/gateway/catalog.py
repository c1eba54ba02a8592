"""The model catalog in memory: public models, their routes, and decrypted credentials.

Loaded whole (it is small) at start-up, again when a `model` or `credential` invalidation
arrives, and every `gateway_cache_ttl_s` as a safety net. Requests never wait for a reload
unless the catalog was never loaded.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from gateway import repository
from gateway.providers import ADAPTERS
from gateway.providers.base import Credential, ProviderAdapter
from tally.crypto import KeyRing, SecretKeyError
from tally.log import get_logger

log = get_logger(__name__)


class Route(msgspec.Struct, frozen=True):
    """One way to serve a public model: a credential, its adapter and the upstream model id."""

    route_id: UUID
    model: str
    upstream_model: str
    priority: int
    # route weight x credential weight: the share of traffic within its priority
    weight: int
    credential: Credential
    adapter: ProviderAdapter


class ModelEntry(msgspec.Struct, frozen=True):
    name: str
    enabled: bool
    context_window: int | None
    max_output_tokens: int | None
    modalities: list[str]
    created: int
    routes: list[Route]


def decrypt_credential(row: asyncpg.Record, ring: KeyRing) -> Credential:
    """A credential row with its secret opened (AES-GCM, bound to the credential id)."""
    credential_id: UUID = row["credential_id"]
    secret = ring.decrypt(
        row["secret_key_id"], bytes(row["secret_ciphertext"]), context=credential_id.bytes
    ).decode()
    # jsonb arrives as its text (the pool registers no JSON codec).
    stored = row["options"]
    options: dict[str, Any] = (
        msgspec.json.decode(stored, type=dict[str, Any]) if isinstance(stored, str) else {}
    )
    # Bedrock's secret is the JSON pair {"access_key_id", "secret_access_key"} (SigV4), or else
    # a Bedrock API key, which goes in `api_key` (sent as a bearer token).
    if row["kind"] == "bedrock" and secret.startswith("{"):
        pair = msgspec.json.decode(secret, type=dict[str, str])
        return Credential(
            credential_id,
            row["kind"],
            row["name"],
            row["base_url"],
            None,
            access_key_id=pair.get("access_key_id"),
            secret_access_key=pair.get("secret_access_key"),
            options=options,
        )
    return Credential(
        credential_id, row["kind"], row["name"], row["base_url"], secret, options=options
    )


async def load_catalog(pool: asyncpg.Pool, ring: KeyRing) -> dict[str, ModelEntry]:
    async with pool.acquire() as conn:
        model_rows, route_rows = await repository.catalog_rows(conn)
    routes: dict[str, list[Route]] = {}
    credentials: dict[UUID, Credential | None] = {}
    for row in route_rows:
        adapter = ADAPTERS.get(row["kind"])
        if adapter is None:
            log.warning("no adapter for provider kind; route skipped", kind=row["kind"])
            continue
        credential_id = row["credential_id"]
        if credential_id not in credentials:
            try:
                credentials[credential_id] = decrypt_credential(row, ring)
            except (SecretKeyError, ValueError, msgspec.DecodeError) as exc:
                log.error(
                    "credential cannot be decrypted; skipped",
                    credential=row["name"],
                    error=str(exc),
                )
                credentials[credential_id] = None
        credential = credentials[credential_id]
        if credential is None:
            continue
        routes.setdefault(row["model"], []).append(
            Route(
                route_id=row["route_id"],
                model=row["model"],
                upstream_model=row["upstream_model"],
                priority=row["priority"],
                weight=row["weight"] * row["credential_weight"],
                credential=credential,
                adapter=adapter,
            )
        )
    return {
        row["name"]: ModelEntry(
            name=row["name"],
            enabled=row["enabled"],
            context_window=row["context_window"],
            max_output_tokens=row["max_output_tokens"],
            modalities=list(row["modalities"] or ["text"]),
            created=int(row["created_at"].timestamp()),
            routes=routes.get(row["name"], []),
        )
        for row in model_rows
    }


def order_routes(routes: list[Route], cooling: set[UUID]) -> list[Route]:
    """Routes in the order to try: by priority (lowest first), weighted-random within one.

    Routes cooling down, and zero-weight routes, go last: tried only when nothing else is left.
    """
    keyed = []
    for route in routes:
        # Efraimidis-Spirakis: sorting by u^(1/w) draws a weighted random permutation.
        draw = random.random() ** (1.0 / route.weight) if route.weight > 0 else 0.0  # noqa: S311
        keyed.append((route.route_id in cooling, route.priority, -draw, route))
    keyed.sort(key=lambda item: item[:3])
    return [item[3] for item in keyed]


class CatalogCache:
    def __init__(self, pool: asyncpg.Pool, ring: KeyRing, *, ttl_s: float) -> None:
        self._pool = pool
        self._ring = ring
        self._ttl = ttl_s
        self.models: dict[str, ModelEntry] = {}
        self._loaded_at = 0.0
        self._loaded = False
        self._reload: asyncio.Task[None] | None = None
        self._dirty = False
        # Credentials this process saw refused (401/403) before the reload drops them.
        self.refused: set[UUID] = set()

    async def get(self, name: str) -> ModelEntry | None:
        if not self._loaded:
            await self.reload()
        elif time.monotonic() - self._loaded_at > self._ttl:
            self.reload_soon()
        return self.models.get(name)

    async def all(self) -> dict[str, ModelEntry]:
        if not self._loaded:
            await self.reload()
        return self.models

    async def reload(self) -> None:
        models = await load_catalog(self._pool, self._ring)
        self.models = models
        self._loaded = True
        self._loaded_at = time.monotonic()
        self.refused = set()

    def reload_soon(self) -> None:
        """Reload in the background (once at a time); callers keep the current catalog."""
        # A change that arrives while a reload runs may not be in what it read: go again.
        self._dirty = True
        if self._reload is None or self._reload.done():
            self._loaded_at = time.monotonic()  # no stampede while the reload runs
            self._reload = asyncio.get_running_loop().create_task(self._background_reload())

    async def _background_reload(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self.reload()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("catalog reload failed; keeping the previous one", error=str(exc))
                return

    def invalidate(self) -> None:
        self.reload_soon()
