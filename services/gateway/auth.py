"""API-key authentication with an in-process cache, invalidated through Redis pub/sub.

A hit costs one SHA-256 and a dict lookup. Entries expire after `gateway_cache_ttl_s` as a
safety net; the pub/sub listener drops them at once when a key, or its tenant, changes. While
the listener is not subscribed (start-up, lost Redis connection) nothing is cached, so a missed
revocation can never linger.
"""

from __future__ import annotations

import time
from datetime import datetime
from uuid import UUID

import asyncpg
import msgspec

from gateway import repository
from gateway.errors import InvalidApiKey, PermissionDenied
from tally.apikeys import hash_api_key

# Unknown keys are remembered briefly, so a flood of bad keys does not reach Postgres.
NEGATIVE_TTL_S = 2.0
MAX_KEY_LENGTH = 512


class Caller(msgspec.Struct, frozen=True):
    """Who is calling: the key, its tenant, and the limits that apply to both."""

    key_id: UUID
    tenant_id: UUID
    key_status: str
    expires_at: float | None  # unix seconds
    allowed_models: frozenset[str] | None
    key_rpm: int
    key_tpm: int
    key_spend_cap_nano: int | None
    tenant_status: str
    mode: str
    tenant_budget_cap_nano: int | None
    tenant_rpm: int
    tenant_tpm: int

    @property
    def prepaid(self) -> bool:
        return self.mode == "prepaid"

    def may_use(self, model: str) -> bool:
        return self.allowed_models is None or model in self.allowed_models


def _caller(row: asyncpg.Record, default_rpm: int, default_tpm: int) -> Caller:
    expires: datetime | None = row["expires_at"]
    allowed = row["allowed_models"]
    return Caller(
        key_id=row["key_id"],
        tenant_id=row["tenant_id"],
        key_status=row["key_status"],
        expires_at=expires.timestamp() if expires else None,
        allowed_models=frozenset(allowed) if allowed is not None else None,
        key_rpm=row["key_rpm"] or 0,
        key_tpm=row["key_tpm"] or 0,
        key_spend_cap_nano=row["spend_cap_nano"],
        tenant_status=row["tenant_status"],
        mode=row["mode"],
        tenant_budget_cap_nano=row["budget_cap_nano"],
        tenant_rpm=row["tenant_rpm"] or default_rpm,
        tenant_tpm=row["tenant_tpm"] or default_tpm,
    )


def api_key_from_headers(authorization: str | None, x_api_key: str | None) -> str:
    """The key from `Authorization: Bearer <key>` or `x-api-key: <key>`."""
    key = ""
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            key = value.strip()
    if not key and x_api_key:
        key = x_api_key.strip()
    if not key:
        raise InvalidApiKey(
            "Missing API key: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`."
        )
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidApiKey("Invalid API key.")
    return key


class KeyCache:
    def __init__(self, pool: asyncpg.Pool, *, ttl_s: float, tenant_rpm: int, tenant_tpm: int):
        self._pool = pool
        self._ttl = ttl_s
        self._default_rpm = tenant_rpm
        self._default_tpm = tenant_tpm
        self._entries: dict[bytes, tuple[Caller | None, float]] = {}
        # Only trusted while the invalidation listener is subscribed.
        self.trusted = False
        self._generation = 0

    async def authenticate(self, key: str) -> Caller:
        """The caller for `key`, or InvalidApiKey / PermissionDenied in OpenAI's error shape."""
        key_hash = hash_api_key(key)
        now = time.monotonic()
        entry = self._entries.get(key_hash) if self.trusted else None
        if entry is None or entry[1] < now:
            generation = self._generation
            async with self._pool.acquire() as conn:
                row = await repository.key_by_hash(conn, key_hash)
            caller = _caller(row, self._default_rpm, self._default_tpm) if row else None
            # A load that raced an invalidation may hold the old row: do not keep it.
            if self.trusted and generation == self._generation:
                self._entries[key_hash] = (
                    caller,
                    now + (self._ttl if caller is not None else min(self._ttl, NEGATIVE_TTL_S)),
                )
        else:
            caller = entry[0]
        if caller is None or caller.key_status != "active":
            raise InvalidApiKey("Invalid API key.")
        if caller.expires_at is not None and caller.expires_at <= time.time():
            raise InvalidApiKey("This API key has expired.")
        if caller.tenant_status != "active":
            raise PermissionDenied("This account is suspended.", code="tenant_suspended")
        return caller

    def forget_key(self, key_id: str) -> None:
        self._generation += 1
        # Unknown-key entries go too: the change may be a key that was just created.
        self._entries = {
            h: e
            for h, e in self._entries.items()
            if e[0] is not None and str(e[0].key_id) != key_id and key_id != "*"
        }

    def forget_tenant(self, tenant_id: str) -> None:
        self._generation += 1
        self._entries = {
            h: e
            for h, e in self._entries.items()
            if e[0] is None or (str(e[0].tenant_id) != tenant_id and tenant_id != "*")
        }

    def clear(self) -> None:
        self._generation += 1
        self._entries = {}
