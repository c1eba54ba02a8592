"""HTTP for `/v1/*`: a raw ASGI fast path, and the same routes as Litestar handlers.

The fast path skips Litestar's request machinery (about 0.1 ms of CPU per request, a third of
the gateway's budget) but keeps its contracts: a fresh `x-request-id` on every response, bodies
validated with msgspec, errors in OpenAI's shape. The Litestar handlers document the routes in
`/schema/openapi.json` and serve them when `TALLY_GATEWAY_FAST_PATH=false`; both run the same
flows in `gateway.service`.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import prometheus_client
import structlog
from litestar import Litestar, Request, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody
from litestar.types import ASGIApp
from redis.exceptions import RedisError

from gateway import schemas
from gateway.errors import (
    GatewayError,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    Unavailable,
)
from gateway.providers.inbound import anthropic_inbound
from gateway.service import Gateway, Send
from tally.errors import ErrorBody, ErrorResponse, TallyError
from tally.http import HTTP_LATENCY, HTTP_REQUESTS
from tally.log import get_logger

log = get_logger(__name__)

CLIENT_DISCONNECTS = prometheus_client.Counter(
    "tally_gateway_client_disconnects",
    "Streamed responses whose client left before the end (the gateway then drains upstream).",
)
_encode = msgspec.json.encode

# Raw ASGI, loosely typed: the fast path reads only a few well-known keys.
Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Flow = Callable[[Gateway, str, dict[str, str], bytes, Send, asyncio.Event], Awaitable[None]]


async def _models_flow(
    gw: Gateway, _rid: str, headers: dict[str, str], _body: bytes, send: Send, _d: asyncio.Event
) -> None:
    await gw.models(headers, send)


# path -> (method, flow)
V1_ROUTES: dict[str, tuple[str, Flow]] = {
    "/v1/chat/completions": ("POST", Gateway.chat),
    "/v1/completions": ("POST", Gateway.completions),
    "/v1/embeddings": ("POST", Gateway.embeddings),
    "/v1/images/generations": ("POST", Gateway.images),
    "/v1/models": ("GET", _models_flow),
    # Anthropic's Messages API, translated by gateway.providers.anthropic_inbound (404 until
    # that module exists).
    "/v1/messages": ("POST", Gateway.messages),
}
ErrorEncoder = Callable[[TallyError], bytes]


def error_body(exc: TallyError) -> bytes:
    return _encode(exc.body())


def error_encoder(path: str) -> ErrorEncoder:
    """The error shape of an endpoint: OpenAI's, or the inbound format's for /v1/messages."""
    if path == "/v1/messages":
        inbound = anthropic_inbound()
        if inbound is not None:
            return inbound.error_body
    return error_body


async def send_error(send: Send, exc: TallyError, encode: ErrorEncoder = error_body) -> None:
    body = encode(exc)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if isinstance(exc, GatewayError) and exc.headers:
        headers += [(k.encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise asyncio.CancelledError
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise RequestTooLarge(f"The request body is larger than {limit} bytes.")
            chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]


class ResponseSend:
    """The ASGI `send` a flow writes to: adds the response's extra headers, remembers the
    status (for the metrics, and to know whether an error can still be answered)."""

    __slots__ = ("_extra", "_send", "status")

    def __init__(self, send: Send, extra_headers: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self._extra = extra_headers
        self.status: int | None = None

    def __call__(self, message: dict[str, Any]) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            if self._extra:
                message["headers"] = [*message.get("headers", ()), *self._extra]
        return self._send(message)


async def run_flow(
    gw: Gateway,
    flow: Flow,
    request_id: str,
    headers: dict[str, str],
    body: bytes,
    receive: Receive,
    send: ResponseSend,
    encode_error: ErrorEncoder = error_body,
) -> None:
    """Run a flow; map errors to the error shape (unless the response already started)."""
    disconnected = asyncio.Event()
    watcher: asyncio.Task[None] | None = None
    if b'"stream"' in body:
        # Only streams need to notice a client leaving while they run.
        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    disconnected.set()
                    CLIENT_DISCONNECTS.inc()
                    return

        watcher = asyncio.get_running_loop().create_task(watch())
    try:
        await flow(gw, request_id, headers, body, send, disconnected)
    except TallyError as exc:
        if send.status is not None:
            log.warning("error after the response started", error=exc.message)
        else:
            await send_error(send, exc, encode_error)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, RedisError) as exc:
        # Postgres or Redis out of reach (a cache miss, a price lookup): refuse, never guess.
        log.error("storage unavailable", error=repr(exc))
        if send.status is None:
            await send_error(
                send,
                Unavailable("The gateway cannot reach its storage right now; try again."),
                encode_error,
            )
    except Exception:
        log.exception("unhandled error in the gateway")
        if send.status is None:
            await send_error(send, InternalError(), encode_error)
    finally:
        if watcher is not None:
            watcher.cancel()


class InternalError(TallyError):
    """A failure of the gateway's own (a bug): 500, in the error shape of every other error."""

    status_code = 500
    error_type = "server_error"
    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("The gateway failed unexpectedly; nothing was charged.")


class RequestIds:
    """Unique request ids without a system call each: 64 random bits per process + a counter.

    The id names the usage event (`usage:<id>`), so it must never repeat across processes or
    restarts; 2^64 random prefixes make a clash between two processes practically impossible.
    """

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count(1)

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


class FastPath:
    """The raw ASGI handler of `/v1/*` (see `GatewayApp`)."""

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body = max_body_bytes
        self.gateway: Gateway | None = None  # set by the runtime once started
        self.request_ids = RequestIds()
        # Prometheus children by (route, method, status): labels() validates and locks.
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, gateway: Gateway, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        # The gateway always makes its own request id: a caller's x-request-id would let two
        # requests share a usage event's idempotency key. The caller's id is only logged.
        request_id = self.request_ids.next()
        response = ResponseSend(send, [(b"x-request-id", request_id.encode())])
        path = scope["path"]
        try:
            await self._serve(gateway, scope, receive, response, request_id)
        finally:
            # The same series tally.http's middleware records for Litestar routes.
            route = path if path in V1_ROUTES else "unmatched"
            series = (route, scope["method"], response.status or 500)
            children = self._series.get(series)
            if children is None:
                children = self._series[series] = (
                    HTTP_REQUESTS.labels("gateway", route, scope["method"], str(series[2])),
                    HTTP_LATENCY.labels("gateway", route),
                )
            children[0].inc()
            children[1].observe(time.perf_counter() - started)

    async def _serve(
        self,
        gateway: Gateway,
        scope: Scope,
        receive: Receive,
        send: ResponseSend,
        request_id: str,
    ) -> None:
        headers = _headers(scope)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        if "x-request-id" in headers:
            structlog.contextvars.bind_contextvars(client_request_id=headers["x-request-id"][:128])
        path = scope["path"]
        route = V1_ROUTES.get(path)
        try:
            if route is None:
                raise NotFound(f"Unknown endpoint {path}.", code="unknown_url")
            method, flow = route
            if scope["method"] != method:
                raise MethodNotAllowed(f"{path} accepts {method} only.")
            body = await read_body(receive, headers, self.max_body) if method == "POST" else b""
        except TallyError as exc:
            await send_error(send, exc, error_encoder(path))
            return
        except asyncio.CancelledError:
            return
        await run_flow(gateway, flow, request_id, headers, body, receive, send, error_encoder(path))


class GatewayApp(Litestar):
    """The gateway's Litestar app, with the `/v1/*` fast path in front of its own handling.

    A `/v1/*` request goes straight to `fast_path`, skipping Litestar's `__call__` and
    middleware stack (per-request work the fast path has no use for); everything else (health,
    metrics, OpenAPI, the lifespan), and `/v1/*` while the runtime is not serving or
    `TALLY_GATEWAY_FAST_PATH=false`, is Litestar's.
    """

    fast_path: FastPath

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        gateway = self.fast_path.gateway
        if gateway is not None and scope["type"] == "http" and scope["path"].startswith("/v1/"):
            await self.fast_path(gateway, scope, receive, send)
            return
        await super().__call__(scope, receive, send)


# --- Litestar handlers: the OpenAPI document, and the routes when the fast path is off ---------


def _flow_app(request: Request[Any, Any, Any], flow: Flow, body: bytes) -> ASGIApp:
    gateway: Gateway = request.app.state.gateway
    # The metering id is always the gateway's own (see FastPath); tally.http's middleware has
    # already put the response's x-request-id header in place.
    request_id = uuid.uuid4().hex
    headers = dict(request.headers)

    async def app(_scope: Scope, receive: Receive, send: Send) -> None:
        await run_flow(
            gateway,
            flow,
            request_id,
            headers,
            body,
            receive,
            ResponseSend(send, []),
            error_encoder(request.url.path),
        )

    return app  # type: ignore[return-value]


_ERRORS = {
    400: ResponseSpec(ErrorResponse, description="Malformed request", generate_examples=False),
    401: ResponseSpec(ErrorResponse, description="Missing or invalid API key"),
    402: ResponseSpec(ErrorResponse, description="insufficient_credits / spend_cap_reached"),
    403: ResponseSpec(ErrorResponse, description="Model not allowed or tenant suspended"),
    404: ResponseSpec(ErrorResponse, description="Unknown model"),
    429: ResponseSpec(ErrorResponse, description="Rate limited (Retry-After)"),
    502: ResponseSpec(ErrorResponse, description="Every provider route failed"),
    503: ResponseSpec(ErrorResponse, description="Usage cannot be recorded; nothing served"),
}


def _responses(ok: type[Any], description: str) -> dict[int, ResponseSpec]:
    return {200: ResponseSpec(ok, description=description), **_ERRORS}


@post(
    "/v1/chat/completions",
    summary="Create a chat completion (OpenAI wire format, SSE when stream=true)",
    tags=["OpenAI-compatible"],
    responses=_responses(schemas.ChatCompletion, "chat.completion, or an SSE stream of chunks"),
    status_code=200,
)
async def chat_completions(
    request: Request[Any, Any, Any], data: JSONBody[schemas.ChatCompletionRequest]
) -> ASGIApp:
    return _flow_app(request, Gateway.chat, await request.body())


@post(
    "/v1/completions",
    summary="Create a text completion (legacy)",
    tags=["OpenAI-compatible"],
    responses=_responses(schemas.TextCompletion, "text_completion"),
    status_code=200,
)
async def completions(
    request: Request[Any, Any, Any], data: JSONBody[schemas.CompletionRequest]
) -> ASGIApp:
    return _flow_app(request, Gateway.completions, await request.body())


@post(
    "/v1/embeddings",
    summary="Create embeddings",
    tags=["OpenAI-compatible"],
    responses=_responses(schemas.Embeddings, "list of embeddings"),
    status_code=200,
)
async def embeddings(
    request: Request[Any, Any, Any], data: JSONBody[schemas.EmbeddingsRequest]
) -> ASGIApp:
    return _flow_app(request, Gateway.embeddings, await request.body())


@post(
    "/v1/images/generations",
    summary="Generate images",
    tags=["OpenAI-compatible"],
    responses=_responses(schemas.ImagesResponse, "generated images"),
    status_code=200,
)
async def images_generations(
    request: Request[Any, Any, Any], data: JSONBody[schemas.ImagesRequest]
) -> ASGIApp:
    return _flow_app(request, Gateway.images, await request.body())


@get(
    "/v1/models",
    summary="List the models this API key may use",
    tags=["OpenAI-compatible"],
    responses=_responses(schemas.ModelList, "the caller's models"),
)
async def list_models(request: Request[Any, Any, Any]) -> ASGIApp:
    return _flow_app(request, _models_flow, b"")


@post(
    "/v1/messages",
    summary="Create a message (Anthropic Messages wire format; SSE when stream=true)",
    tags=["Anthropic-compatible"],
    status_code=200,
)
async def messages(request: Request[Any, Any, Any], data: JSONBody[dict[str, Any]]) -> ASGIApp:
    return _flow_app(request, Gateway.messages, await request.body())


ROUTE_HANDLERS = [
    chat_completions,
    completions,
    embeddings,
    images_generations,
    list_models,
    messages,
]

__all__ = ["ROUTE_HANDLERS", "V1_ROUTES", "ErrorBody", "FastPath", "GatewayApp"]
