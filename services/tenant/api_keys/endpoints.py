"""HTTP routes of API keys; every one is scoped to a tenant in its path."""

from __future__ import annotations

from uuid import UUID

from litestar import get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody

from tenant.api_keys.schemas import (
    ApiKey,
    ApiKeyCreate,
    ApiKeyPage,
    ApiKeyRotate,
    ApiKeyUpdate,
    IssuedApiKey,
)
from tenant.api_keys.service import api_key_service
from tenant.pagination import DEFAULT_LIMIT
from tenant.params import Caller, Cursor, Limit, Services

_KEYS = "/v1/tenants/{tenant_id:uuid}/api-keys"
_KEY = _KEYS + "/{key_id:uuid}"


@post(_KEYS, status_code=201, tags=["api keys"])
async def create_api_key(
    tenant_id: FromPath[UUID], data: JSONBody[ApiKeyCreate], principal: Caller, runtime: Services
) -> IssuedApiKey:
    """Issue an API key (tenant admins, operators). The `key` is in this answer only."""
    principal.require_tenant(tenant_id, "admin")
    async with runtime.unit(principal) as uow:
        return await api_key_service.create(uow, tenant_id, data)


@get(_KEYS, tags=["api keys"])
async def list_api_keys(
    tenant_id: FromPath[UUID],
    principal: Caller,
    runtime: Services,
    include_revoked: FromQuery[bool] = False,
    limit: Limit = DEFAULT_LIMIT,
    cursor: Cursor = None,
) -> ApiKeyPage:
    """The tenant's keys, newest first, by their visible prefix."""
    principal.require_tenant(tenant_id)
    async with runtime.pool.acquire() as conn:
        return await api_key_service.list_keys(
            conn, tenant_id, include_revoked=include_revoked, cursor=cursor, limit=limit
        )


@get(_KEY, tags=["api keys"])
async def get_api_key(
    tenant_id: FromPath[UUID], key_id: FromPath[UUID], principal: Caller, runtime: Services
) -> ApiKey:
    principal.require_tenant(tenant_id)
    async with runtime.pool.acquire() as conn:
        return await api_key_service.get(conn, tenant_id, key_id)


@patch(_KEY, tags=["api keys"])
async def update_api_key(
    tenant_id: FromPath[UUID],
    key_id: FromPath[UUID],
    data: JSONBody[ApiKeyUpdate],
    principal: Caller,
    runtime: Services,
) -> ApiKey:
    """Change a key's name, expiry, model allow-list, limits or spend cap."""
    principal.require_tenant(tenant_id, "admin")
    async with runtime.unit(principal) as uow:
        return await api_key_service.update(uow, tenant_id, key_id, data)


@post(_KEY + "/revoke", status_code=200, tags=["api keys"])
async def revoke_api_key(
    tenant_id: FromPath[UUID], key_id: FromPath[UUID], principal: Caller, runtime: Services
) -> ApiKey:
    """Revoke a key; the gateway refuses it within a second."""
    principal.require_tenant(tenant_id, "admin")
    async with runtime.unit(principal) as uow:
        return await api_key_service.revoke(uow, tenant_id, key_id)


@post(_KEY + "/rotate", status_code=201, tags=["api keys"])
async def rotate_api_key(
    tenant_id: FromPath[UUID],
    key_id: FromPath[UUID],
    principal: Caller,
    runtime: Services,
    data: JSONBody[ApiKeyRotate | None] = None,
) -> IssuedApiKey:
    """Replace a key by a new one with the same settings; the old one is revoked at once or
    after `grace_seconds`. The new `key` is in this answer only."""
    principal.require_tenant(tenant_id, "admin")
    async with runtime.unit(principal) as uow:
        return await api_key_service.rotate(
            uow, tenant_id, key_id, grace_seconds=(data or ApiKeyRotate()).grace_seconds
        )


ROUTES = [
    create_api_key,
    list_api_keys,
    get_api_key,
    update_api_key,
    revoke_api_key,
    rotate_api_key,
]
