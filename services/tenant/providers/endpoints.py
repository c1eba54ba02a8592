"""HTTP routes of provider credentials (operators only)."""

from __future__ import annotations

from uuid import UUID

from litestar import Router, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody

from tally.auth import require_platform_role
from tally.events.tenant import ProviderKind
from tenant.params import Caller, Services
from tenant.providers.schemas import (
    ConnectionTest,
    Credential,
    CredentialCreate,
    CredentialDisable,
    CredentialList,
    CredentialUpdate,
)
from tenant.providers.service import provider_service


@post("/", status_code=201)
async def add_credential(
    data: JSONBody[CredentialCreate], principal: Caller, runtime: Services
) -> Credential:
    """Connect a provider credential. The secret is sealed at once and never shown again
    (only its last four characters)."""
    async with runtime.unit(principal) as uow:
        return await provider_service.add(uow, data, runtime.key_ring)


@get("/")
async def list_credentials(
    runtime: Services,
    kind: FromQuery[ProviderKind | None] = None,
    include_disabled: FromQuery[bool] = True,
) -> CredentialList:
    async with runtime.pool.acquire() as conn:
        return await provider_service.list_credentials(
            conn, kind=kind, include_disabled=include_disabled
        )


@get("/{credential_id:uuid}")
async def get_credential(credential_id: FromPath[UUID], runtime: Services) -> Credential:
    async with runtime.pool.acquire() as conn:
        return await provider_service.get(conn, credential_id)


@patch("/{credential_id:uuid}")
async def update_credential(
    credential_id: FromPath[UUID],
    data: JSONBody[CredentialUpdate],
    principal: Caller,
    runtime: Services,
) -> Credential:
    """Change a credential: name, base URL, weight, options, or its secret."""
    async with runtime.unit(principal) as uow:
        return await provider_service.update(uow, credential_id, data, runtime.key_ring)


@post("/{credential_id:uuid}/disable", status_code=200)
async def disable_credential(
    credential_id: FromPath[UUID],
    principal: Caller,
    runtime: Services,
    data: JSONBody[CredentialDisable | None] = None,
) -> Credential:
    """Stop routing through a credential."""
    reason = (data or CredentialDisable()).reason
    async with runtime.unit(principal) as uow:
        return await provider_service.set_enabled(uow, credential_id, False, reason)


@post("/{credential_id:uuid}/enable", status_code=200)
async def enable_credential(
    credential_id: FromPath[UUID], principal: Caller, runtime: Services
) -> Credential:
    async with runtime.unit(principal) as uow:
        return await provider_service.set_enabled(uow, credential_id, True)


@post("/{credential_id:uuid}/test", status_code=200)
async def run_connection_test(credential_id: FromPath[UUID], runtime: Services) -> ConnectionTest:
    """Call the provider's model list with this credential and report the outcome."""
    async with runtime.pool.acquire() as conn:
        return await provider_service.test(
            conn,
            credential_id,
            runtime.key_ring,
            runtime.http,
            runtime.settings.provider_test_timeout_seconds,
        )


router = Router(
    path="/v1/providers",
    guards=[require_platform_role("operator")],
    tags=["providers"],
    route_handlers=[
        add_credential,
        list_credentials,
        get_credential,
        update_credential,
        disable_credential,
        enable_credential,
        run_connection_test,
    ],
)
ROUTES = [router]
