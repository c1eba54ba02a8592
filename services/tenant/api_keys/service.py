"""API-key logic: issue, list, change, revoke, rotate; each change reaches the gateway's cache.

The gateway caches keys by hash and drops an entry when an `api_key` invalidation names its
id, published after the change commits, so a revoked key stops working within a second.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import msgspec

from tally.apikeys import issue_api_key
from tally.db import Connection
from tally.errors import Conflict, InvalidRequest, NotFound
from tally.events.tenant import ApiKeyCreated, ApiKeyRevoked, ApiKeyRotated, ApiKeyUpdated
from tenant.api_keys import repository
from tenant.api_keys.schemas import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyPage,
    ApiKeyUpdate,
    IssuedApiKey,
)
from tenant.pagination import created_cursor, decode_created_cursor
from tenant.unit_of_work import UnitOfWork

_UPDATABLE = ("name", "expires_at", "allowed_models", "rpm_limit", "tpm_limit", "spend_cap_nano")


def _status(row: asyncpg.Record, now: datetime) -> str:
    if row["status"] == "revoked":
        return "revoked"
    if row["expires_at"] is not None and row["expires_at"] <= now:
        return "expired"
    return "active"


def key_from_row(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant_id=row["tenant_id"],
        name=row["name"],
        prefix=row["prefix"],
        status=_status(row, datetime.now(UTC)),  # type: ignore[arg-type]
        expires_at=row["expires_at"],
        allowed_models=row["allowed_models"],
        rpm_limit=row["rpm_limit"],
        tpm_limit=row["tpm_limit"],
        spend_cap_nano=row["spend_cap_nano"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        revoked_at=row["revoked_at"],
        replaced_by=row["replaced_by"],
    )


def _dedupe(models: list[str] | None) -> list[str] | None:
    return list(dict.fromkeys(models)) if models is not None else None


def _check_future(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise InvalidRequest("expires_at must be in the future", param="expires_at")


class ApiKeyService:
    async def create(self, uow: UnitOfWork, tenant_id: UUID, data: ApiKeyCreate) -> IssuedApiKey:
        """Issue a key: `tk_` + 256 random bits, returned once; only its hash is stored."""
        await self._require_active_tenant(uow.conn, tenant_id)
        _check_future(data.expires_at)
        return await self._issue(
            uow,
            tenant_id,
            name=" ".join(data.name.split()),
            expires_at=data.expires_at,
            allowed_models=_dedupe(data.allowed_models),
            rpm_limit=data.rpm_limit,
            tpm_limit=data.tpm_limit,
            spend_cap_nano=data.spend_cap_nano,
        )

    async def get(self, conn: Connection, tenant_id: UUID, key_id: UUID) -> ApiKey:
        """One key of the tenant, or 404 (also for another tenant's key)."""
        row = await repository.fetch_key(conn, tenant_id, key_id)
        if row is None:
            raise NotFound("API key not found", param="key_id")
        return key_from_row(row)

    async def tenant_of(self, conn: Connection, key_id: UUID) -> UUID:
        """The tenant holding a key; for operators who name a key by id alone."""
        tenant_id = await repository.tenant_of_key(conn, key_id)
        if tenant_id is None:
            raise NotFound("API key not found", param="key_id")
        return tenant_id

    async def list_keys(
        self,
        conn: Connection,
        tenant_id: UUID,
        *,
        include_revoked: bool,
        cursor: str | None,
        limit: int,
    ) -> ApiKeyPage:
        """The tenant's keys newest first (revoked ones only when asked)."""
        rows = await repository.list_keys(
            conn,
            tenant_id,
            include_revoked=include_revoked,
            after=decode_created_cursor(cursor),
            limit=limit + 1,
        )
        keys = [key_from_row(r) for r in rows[:limit]]
        last = keys[-1] if keys else None
        return ApiKeyPage(
            data=keys,
            next_cursor=created_cursor(last.created_at, last.id)
            if len(rows) > limit and last
            else None,
        )

    async def update(
        self, uow: UnitOfWork, tenant_id: UUID, key_id: UUID, data: ApiKeyUpdate
    ) -> ApiKey:
        """Change a key's name, expiry, allow-list, limits or spend cap."""
        row = await repository.fetch_key(uow.conn, tenant_id, key_id, for_update=True)
        if row is None:
            raise NotFound("API key not found", param="key_id")
        if row["status"] == "revoked":
            raise Conflict("a revoked key cannot be changed", code="key_revoked")
        requested: dict[str, Any] = {
            f: getattr(data, f) for f in _UPDATABLE if getattr(data, f) is not msgspec.UNSET
        }
        if "name" in requested:
            requested["name"] = " ".join(requested["name"].split())
        if "allowed_models" in requested:
            requested["allowed_models"] = _dedupe(requested["allowed_models"])
        if "expires_at" in requested:
            _check_future(requested["expires_at"])
        current = {f: row[f] for f in _UPDATABLE}
        changed = {f: v for f, v in requested.items() if current[f] != v}
        if not changed:
            return key_from_row(row)
        updated = await repository.update_key(uow.conn, tenant_id, key_id, {**current, **changed})
        await uow.record(
            ApiKeyUpdated(
                tenant_id=tenant_id,
                key_id=key_id,
                before={f: msgspec.to_builtins(current[f]) for f in changed},
                after={f: msgspec.to_builtins(v) for f, v in changed.items()},
                actor=uow.actor,
            )
        )
        uow.invalidate("api_key", str(key_id))
        return key_from_row(updated)

    async def revoke(self, uow: UnitOfWork, tenant_id: UUID, key_id: UUID) -> ApiKey:
        """Revoke a key for good; the gateway refuses it within a second."""
        row = await repository.fetch_key(uow.conn, tenant_id, key_id, for_update=True)
        if row is None:
            raise NotFound("API key not found", param="key_id")
        if row["status"] == "revoked":
            raise Conflict("the key is already revoked", code="already_revoked")
        updated = await repository.revoke_key(uow.conn, tenant_id, key_id)
        await uow.record(ApiKeyRevoked(tenant_id=tenant_id, key_id=key_id, actor=uow.actor))
        uow.invalidate("api_key", str(key_id))
        return key_from_row(updated)

    async def rotate(
        self, uow: UnitOfWork, tenant_id: UUID, key_id: UUID, *, grace_seconds: int
    ) -> IssuedApiKey:
        """Replace a key by a new one with the same name and limits.

        The old key is revoked at once, or keeps working for `grace_seconds` so clients can
        switch over (its expiry is brought forward, never pushed back).
        """
        await self._require_active_tenant(uow.conn, tenant_id)
        row = await repository.fetch_key(uow.conn, tenant_id, key_id, for_update=True)
        if row is None:
            raise NotFound("API key not found", param="key_id")
        now = datetime.now(UTC)
        if _status(row, now) != "active":
            raise Conflict(f"the key is {_status(row, now)}", code="key_not_active")
        issued = await self._issue(
            uow,
            tenant_id,
            name=row["name"],
            expires_at=row["expires_at"],
            allowed_models=row["allowed_models"],
            rpm_limit=row["rpm_limit"],
            tpm_limit=row["tpm_limit"],
            spend_cap_nano=row["spend_cap_nano"],
        )
        old_expires_at: datetime | None = None
        if grace_seconds == 0:
            await repository.revoke_key(uow.conn, tenant_id, key_id, replaced_by=issued.id)
        else:
            old_expires_at = now + timedelta(seconds=grace_seconds)
            if row["expires_at"] is not None:
                old_expires_at = min(old_expires_at, row["expires_at"])
            await repository.retire_key_at(uow.conn, tenant_id, key_id, old_expires_at, issued.id)
        await uow.record(
            ApiKeyRotated(
                tenant_id=tenant_id,
                key_id=key_id,
                new_key_id=issued.id,
                actor=uow.actor,
                old_key_expires_at=old_expires_at,
            )
        )
        uow.invalidate("api_key", str(key_id))
        return issued

    async def _require_active_tenant(self, conn: Connection, tenant_id: UUID) -> None:
        status = await repository.tenant_status(conn, tenant_id)
        if status is None:
            raise NotFound("tenant not found", param="tenant_id")
        if status != "active":
            raise Conflict("the tenant is suspended", code="tenant_suspended")

    async def _issue(
        self,
        uow: UnitOfWork,
        tenant_id: UUID,
        *,
        name: str,
        expires_at: datetime | None,
        allowed_models: list[str] | None,
        rpm_limit: int | None,
        tpm_limit: int | None,
        spend_cap_nano: int | None,
    ) -> IssuedApiKey:
        issued = issue_api_key()
        key_id = uuid.uuid4()
        row = await repository.insert_key(
            uow.conn,
            key_id=key_id,
            tenant_id=tenant_id,
            name=name,
            prefix=issued.prefix,
            key_hash=issued.key_hash,
            expires_at=expires_at,
            allowed_models=allowed_models,
            rpm_limit=rpm_limit,
            tpm_limit=tpm_limit,
            spend_cap_nano=spend_cap_nano,
        )
        await uow.record(
            ApiKeyCreated(
                tenant_id=tenant_id,
                key_id=key_id,
                name=name,
                prefix=issued.prefix,
                actor=uow.actor,
                expires_at=expires_at,
                allowed_models=allowed_models,
                rpm_limit=rpm_limit,
                tpm_limit=tpm_limit,
                spend_cap_nano=spend_cap_nano,
            )
        )
        return IssuedApiKey(**msgspec.structs.asdict(key_from_row(row)), key=issued.key)


api_key_service = ApiKeyService()
