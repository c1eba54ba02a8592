"""What every Tally HTTP service shares: app factory, health, metrics, request ids, errors."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import msgspec
import prometheus_client
import redis.asyncio as redis
import structlog
from litestar import Litestar, MediaType, Request, Response, get
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from tally import __doc__ as _tally_doc
from tally.auth import PRINCIPAL_DEPENDENCY
from tally.config import Settings, get_settings
from tally.database_metrics import DatabaseCollector
from tally.db import create_pool
from tally.errors import ErrorBody, ErrorResponse, TallyError
from tally.log import configure_logging, get_logger

log = get_logger(__name__)

_encode = msgspec.json.encode
_HTTP_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    body = ErrorResponse(
        ErrorBody(
            message,
            type_
            or _HTTP_ERROR_TYPES.get(
                status, "invalid_request_error" if status < 500 else "server_error"
            ),
            param,
            code,
        )
    )
    return Response(_encode(body), status_code=status, media_type=MediaType.JSON, headers=headers)


def _on_tally_error(_request: Request[Any, Any, Any], exc: TallyError) -> Response[bytes]:
    return Response(_encode(exc.body()), status_code=exc.status_code, media_type=MediaType.JSON)


def _on_validation_error(
    _request: Request[Any, Any, Any], exc: ValidationException
) -> Response[bytes]:
    # Litestar puts msgspec's precise message ("Expected `int`, got `str` - at `$.limit`") in
    # `extra`; surface the first one with the offending field as `param`.
    message, param = exc.detail, None
    extra = exc.extra if isinstance(exc.extra, list) else []
    if extra and isinstance(extra[0], dict):
        message = str(extra[0].get("message") or message)
        key = extra[0].get("key")
        param = str(key) if key else None
        if extra[0].get("source") == "body" and message == f"'{key}'":
            # Litestar reports a missing body as the KeyError of its parameter name.
            message = "a JSON request body is required"
    return error_response(400, message, code="invalid_request", param=param)


def _on_http_error(_request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    code = {
        400: "invalid_request",
        404: "not_found",
        405: "method_not_allowed",
        413: "request_too_large",
        401: "unauthorized",
        403: "forbidden",
    }.get(exc.status_code)
    return error_response(exc.status_code, exc.detail, code=code, headers=exc.headers)


def _on_dependency_down(_request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.warning("dependency unavailable", error=f"{type(exc).__name__}: {exc}")
    return error_response(
        503,
        "a backing service is unavailable; retry shortly",
        code="service_unavailable",
        headers={"Retry-After": "1"},
    )


def _on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("unhandled error", path=request.url.path)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal error", code="internal_error")


EXCEPTION_HANDLERS: dict[Any, Callable[..., Response[bytes]]] = {
    TallyError: _on_tally_error,
    ValidationException: _on_validation_error,
    HTTPException: _on_http_error,
    # Postgres or Redis down or the connection lost mid-request: 503, never a 500.
    OSError: _on_dependency_down,
    asyncpg.InterfaceError: _on_dependency_down,
    asyncpg.exceptions.ConnectionDoesNotExistError: _on_dependency_down,
    asyncpg.exceptions.CannotConnectNowError: _on_dependency_down,
    redis.ConnectionError: _on_dependency_down,
    redis.TimeoutError: _on_dependency_down,
    Exception: _on_unexpected_error,
}


HTTP_REQUESTS = prometheus_client.Counter(
    "tally_http_requests_total", "HTTP requests answered", ["service", "route", "method", "status"]
)
HTTP_LATENCY = prometheus_client.Histogram(
    "tally_http_request_duration_seconds",
    "Time to answer an HTTP request (until the body ends)",
    ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def request_middleware_for(service: str) -> Callable[[ASGIApp], ASGIApp]:
    """Per request: an id (the caller's `x-request-id` or a new one) bound into every log line
    and echoed in the response, and the request counted and timed by route template."""

    def middleware_factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            started = time.perf_counter()
            request_id = ""
            for name, value in scope["headers"]:
                if name == b"x-request-id":
                    # Bounded and printable: a caller's id ends up in logs and headers.
                    candidate = value[:128].decode("latin-1")
                    if candidate.isprintable():
                        request_id = candidate
                    break
            if not request_id:
                request_id = uuid.uuid4().hex
            scope.setdefault("state", {})["request_id"] = request_id
            structlog.contextvars.clear_contextvars()
            structlog.contextvars.bind_contextvars(request_id=request_id)
            header = (b"x-request-id", request_id.encode("latin-1"))
            status = 500

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    message["headers"] = [*message.get("headers", []), header]
                await send(message)

            try:
                await app(scope, receive, send_with_id)
            finally:
                # Unrouted paths share one label, so scanners cannot blow up the label set.
                route = scope.get("path_template") or "unmatched"
                HTTP_REQUESTS.labels(service, route, scope["method"], str(status)).inc()
                HTTP_LATENCY.labels(service, route).observe(time.perf_counter() - started)

        return middleware

    return middleware_factory


def bind_tenant(tenant_id: uuid.UUID | str) -> None:
    """Add the authenticated tenant to every log line of the current request."""
    structlog.contextvars.bind_contextvars(tenant_id=str(tenant_id))


@get("/healthz", include_in_schema=False, sync_to_thread=False)
def healthz() -> dict[str, str]:
    """Liveness: the process is up and serving."""
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(state: State) -> Response[bytes]:
    """Readiness: Postgres and Redis answer. 503 otherwise, so no traffic is routed here."""
    checks: dict[str, str] = {}
    started = time.perf_counter()
    try:
        async with state.pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        await state.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    body = {
        "status": "ok" if ready else "unavailable",
        "checks": checks,
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    return Response(_encode(body), status_code=200 if ready else 503, media_type=MediaType.JSON)


@get("/metrics", include_in_schema=False)
async def metrics(state: State) -> Response[bytes]:
    """Prometheus exposition of this process's metrics (and the service's database-read ones)."""
    for collector in state.database_collectors:
        await collector.refresh(state.pool, state.settings)
    return Response(
        prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST
    )


@asynccontextmanager
async def _connect_resources(app: Litestar) -> AsyncIterator[None]:
    """Open the pool and the Redis client for the app's life; close them on shutdown.

    A database that is down at start does not keep the process from starting: the pool then
    opens its connections lazily, `/readyz` answers 503 and requests that need Postgres get 503
    (design invariant 8: refuse, never serve unmetered) until it is back.
    """
    settings: Settings = app.state.settings
    try:
        app.state.pool = await create_pool(settings)
    except (OSError, asyncpg.PostgresError) as exc:
        log.warning("postgres unreachable at start; serving 503 until it is back", error=str(exc))
        app.state.pool = await create_pool(settings, min_size=0)
    app.state.redis = redis.from_url(settings.redis_url)  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        await app.state.redis.aclose()
        await app.state.pool.close()


def create_service_app(
    name: str,
    route_handlers: Sequence[Any] = (),
    *,
    settings: Settings | None = None,
    lifespan: Sequence[Callable[[Litestar], Any]] = (),
    on_app_init: Sequence[Callable[[AppConfig], AppConfig]] = (),
    database_collectors: Sequence[DatabaseCollector] = (),
    app_class: type[Litestar] = Litestar,
) -> Litestar:
    """A Tally service: health, readiness, metrics, OpenAPI, request ids and the error shape.

    `database_collectors` (registered with prometheus_client by their modules) are refreshed
    from Postgres on each scrape of this service's `/metrics`. `app_class` is Litestar or a
    subclass of it (the gateway's puts its `/v1/*` fast path in front).
    """
    settings = settings or get_settings()
    configure_logging(settings)
    return app_class(
        route_handlers=[healthz, readyz, metrics, *route_handlers],
        state=State(
            {
                "settings": settings,
                "service": name,
                "database_collectors": tuple(database_collectors),
            }
        ),
        lifespan=[_connect_resources, *lifespan],
        # Any handler may ask for `principal: Principal` (401 without a valid token). Declared once
        # here: Litestar refuses the same provider declared again on a router or a handler.
        dependencies={"principal": PRINCIPAL_DEPENDENCY},
        middleware=[request_middleware_for(name)],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(
            title=f"Tally {name}",
            version="0.1.0",
            description=(_tally_doc or "").strip(),
            path="/schema",
        ),
        request_max_body_size=settings.max_body_bytes,
        # Our structlog set-up owns logging; Litestar's own config would re-route library
        # loggers through a queue that can lose the last lines at shutdown.
        logging_config=None,
        on_app_init=list(on_app_init),
        debug=False,
    )
