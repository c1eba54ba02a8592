"""The tenant service's Litestar application: the control plane on :8082.

Routes (all under /v1, documented in docs/operators.md and at /schema):
auth and sessions, people and invitations, tenants, API keys, provider credentials, the model
catalog and the audit log. Every route but sign-in needs a bearer access token.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import msgspec
from litestar import Litestar, MediaType, Request, Response
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.exceptions import ValidationException
from litestar.openapi.spec import Components, SecurityScheme

from tally.config import Settings, get_settings
from tally.http import create_service_app
from tenant.api_keys.endpoints import ROUTES as API_KEY_ROUTES
from tenant.audit.endpoints import ROUTES as AUDIT_ROUTES
from tenant.auth.endpoints import ROUTES as AUTH_ROUTES
from tenant.auth.throttle import TooManyAttempts
from tenant.catalog.endpoints import ROUTES as CATALOG_ROUTES
from tenant.people.endpoints import ROUTES as PEOPLE_ROUTES
from tenant.providers.endpoints import ROUTES as PROVIDER_ROUTES
from tenant.runtime import Runtime, provide_runtime
from tenant.tenants.endpoints import ROUTES as TENANT_ROUTES

ROUTES: list[Any] = [
    *AUTH_ROUTES,
    *PEOPLE_ROUTES,
    *TENANT_ROUTES,
    *API_KEY_ROUTES,
    *PROVIDER_ROUTES,
    *CATALOG_ROUTES,
    *AUDIT_ROUTES,
]


@asynccontextmanager
async def _tenant_runtime(app: Litestar) -> AsyncIterator[None]:
    """Build the runtime on the shared pool and Redis; fail at start on bad keys."""
    settings: Settings = app.state.settings
    async with aiohttp.ClientSession() as http:
        runtime = Runtime(settings, app.state.pool, app.state.redis, http)
        # Loaded now, so a malformed TALLY_JWT_KEYS or TALLY_SECRET_KEY stops the process at
        # start instead of failing requests later.
        app.state.signing_keys = runtime.signing_keys
        app.state.key_ring = runtime.key_ring
        app.state.runtime = runtime
        yield


_FIELD_IN_PATH = re.compile(r"`\$\.(\w+)")


async def strict_json_body(request: Request[Any, Any, Any]) -> None:
    """Decode the body strictly against the route's schema before Litestar's lax conversion.

    Litestar converts bodies leniently (a JSON string "5" becomes the integer 5); the admin
    APIs take exactly the documented types, so a wrong type is a 400 naming the field. The
    body is cached by the request, so the handler's own decoding reads it again for free.
    """
    field = request.route_handler.parsed_data_field
    if field is None:
        return
    body = await request.body()
    if not body.strip() and field.is_optional:
        return  # an optional body left out
    try:
        msgspec.json.decode(body, type=field.annotation, strict=True)
    except msgspec.ValidationError as exc:
        match = _FIELD_IN_PATH.search(str(exc))
        raise ValidationException(
            detail="invalid request body",
            extra=[
                {"message": str(exc), "key": match.group(1) if match else "data", "source": "body"}
            ],
        ) from None
    except msgspec.DecodeError:
        return  # not JSON at all: Litestar's own decoding answers with its 400


def _on_too_many_attempts(_request: Request[Any, Any, Any], exc: TooManyAttempts) -> Response[Any]:
    return Response(
        exc.body(),
        status_code=exc.status_code,
        media_type=MediaType.JSON,
        headers={"Retry-After": str(exc.retry_after)},
    )


def _configure(config: AppConfig) -> AppConfig:
    config.dependencies.update(
        {
            "runtime": Provide(provide_runtime, sync_to_thread=False),
        }
    )
    config.exception_handlers[TooManyAttempts] = _on_too_many_attempts
    config.before_request = strict_json_body
    if config.openapi_config is not None:
        config.openapi_config.components = Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    bearer_format="JWT",
                    description="An access token from POST /v1/auth/sign-in (or /oidc).",
                )
            }
        )
        config.openapi_config.security = [{"bearer": []}]
    return config


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    return create_service_app(
        "tenant",
        ROUTES,
        settings=settings,
        lifespan=[_tenant_runtime],
        on_app_init=[_configure],
    )
