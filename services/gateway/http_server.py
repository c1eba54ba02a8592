"""`tally serve gateway`'s HTTP protocol: uvicorn's httptools protocol with its own exchange for
`/v1/*`.

uvicorn runs every request as an ASGI cycle: a scope dict, a cycle object, header checks on every
response, a head written apart from its body. `/v1/*` is the hot path and only ever meets our
own flows, so the protocol hands those requests to `Exchange`, which speaks to the flows in the
same ASGI messages but writes a response's head and body in one system call and skips the
generic checks (the flows' headers are all the gateway's own). Everything else — health,
metrics, OpenAPI, HEAD requests, `Expect: 100-continue`, percent-encoded paths, upgrades, and
`/v1/*` before the runtime serves — takes uvicorn's own cycle to the Litestar app.

uvicorn still owns the connection: keep-alive and its timeout, pipelining, flow control, the
graceful shutdown that waits for in-flight requests (an exchange is one of its tasks).

For uvicorn's own cycle the transport below holds a response head until the next write (the
body) and sends the two together; a head with no body right behind it (a stream waiting on its
provider) goes out on the next loop iteration. Order of bytes is never changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.endpoints import FastPath, InternalError, Scope, send_error
from tally.log import get_logger

log = get_logger(__name__)


class _HeadHoldingTransport:
    """A transport proxy that joins a response head with the write that follows it."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data.startswith(b"HTTP/"):
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def writelines(self, lines: list[bytes]) -> None:
        self.flush()
        self._transport.writelines(lines)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class Exchange:
    """One `/v1/*` request and its response on a connection.

    It has what uvicorn's protocol reads and writes of a request cycle (`body`, `more_body`,
    `message_event`, `disconnected`, `keep_alive`, `response_complete`, `run_asgi`), and the
    ASGI `receive` and `send` the flows use.
    """

    __slots__ = (
        "_chunked",
        "_fast_path",
        "_gateway",
        "_head",
        "_left",
        "_scope",
        "body",
        "default_headers",
        "disconnected",
        "flow",
        "keep_alive",
        "message_event",
        "more_body",
        "on_response",
        "response_complete",
        "response_started",
        "transport",
    )

    def __init__(
        self,
        fast_path: FastPath,
        gateway: Any,
        scope: Scope,
        transport: asyncio.Transport,
        flow: FlowControl,
        default_headers: list[tuple[bytes, bytes]],
        keep_alive: bool,
        on_response: Callable[[], None],
    ) -> None:
        self._fast_path = fast_path
        self._gateway = gateway
        self._scope = scope
        self.transport = transport
        self.flow = flow
        self.default_headers = default_headers
        self.keep_alive = keep_alive
        self.on_response = on_response
        self.message_event = asyncio.Event()
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self._head: bytes | None = None
        self._chunked = False
        self._left = 0  # body bytes still due under content-length

    async def run_asgi(self, _app: Any) -> None:
        """The request's task (uvicorn's protocol starts it, and waits for it on shutdown)."""
        try:
            await self._fast_path(self._gateway, self._scope, self.receive, self.send)
        except BaseException as exc:
            log.exception("unhandled error serving /v1")
            if not self.response_started and not self.disconnected:
                await send_error(self.send, InternalError())
            else:
                self.transport.close()
            if not isinstance(exc, Exception):
                raise
        else:
            if not self.response_complete and not self.disconnected:
                log.error("a /v1 flow returned without completing its response")
                self.transport.close()
        finally:
            self.on_response = _nothing

    async def receive(self) -> dict[str, Any]:
        if not self.disconnected and not self.response_complete:
            self.flow.resume_reading()
            await self.message_event.wait()
            self.message_event.clear()
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        message = {"type": "http.request", "body": bytes(self.body), "more_body": self.more_body}
        self.body = bytearray()
        return message

    async def send(self, message: dict[str, Any]) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {message['type']}")
            self.response_started = True
            head = [STATUS_LINE[message["status"]]]
            length: int | None = None
            for name, value in (*self.default_headers, *message.get("headers", ())):
                if name == b"content-length":
                    length = int(value)
                head += (name, b": ", value, b"\r\n")
            if not self.keep_alive:
                head.append(b"connection: close\r\n")
            if length is None:
                self._chunked = True
                head.append(b"transfer-encoding: chunked\r\n\r\n")
                self._head = b"".join(head)
                # A stream: its head goes out with its first chunk if the provider's is already
                # here, else at the end of this loop iteration, alone.
                asyncio.get_running_loop().call_soon(self._flush_head)
            else:
                self._left = length
                head.append(b"\r\n")
                self._head = b"".join(head)  # written with the body, which follows at once
            return
        if self.response_complete:
            raise RuntimeError(f"{message['type']} after the response completed")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self._chunked:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more:
                data += b"0\r\n\r\n"
        else:
            self._left -= len(body)
            if self._left < 0 or (not more and self._left):
                self.transport.close()
                raise RuntimeError("response body and content-length disagree")
            data = body
        if self._head is not None:
            data = self._head + data
            self._head = None
        self.transport.write(data)
        if not more:
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _flush_head(self) -> None:
        head = self._head
        if head is not None and not self.disconnected:
            self._head = None
            self.transport.write(head)


def _nothing() -> None:
    pass


def _fast_path_of(app: Any) -> FastPath | None:
    """The gateway app's fast path, under whatever middleware uvicorn wrapped it in."""
    for _ in range(8):
        fast_path = getattr(app, "fast_path", None)
        if fast_path is not None or not hasattr(app, "app"):
            return fast_path
        app = app.app
    return None


class GatewayHttpProtocol(HttpToolsProtocol):
    """`tally serve gateway`'s HTTP protocol (see the module docstring)."""

    _raw: asyncio.Transport
    _fast_path: FastPath | None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._raw = transport
        self._fast_path = _fast_path_of(self.app)
        proxy = _HeadHoldingTransport(transport, self.loop)
        super().connection_made(proxy)  # type: ignore[arg-type]

    def on_headers_complete(self) -> None:
        fast_path = self._fast_path
        gateway = fast_path.gateway if fast_path is not None else None
        url = self.url
        method = self.parser.get_method()
        if (
            gateway is None
            or not url.startswith(b"/v1/")
            or method not in (b"POST", b"GET")
            or b"%" in url
            or self.expect_100_continue
            or self.limit_concurrency is not None
            or self.parser.should_upgrade()
        ):
            super().on_headers_complete()
            return
        assert fast_path is not None
        http_version = self.parser.get_http_version()
        scope: Scope = self.scope  # type: ignore[assignment]
        scope["method"] = method.decode()
        scope["path"] = url.partition(b"?")[0].decode()
        existing = self.cycle
        exchange = Exchange(
            fast_path,
            gateway,
            scope,
            self._raw,
            self.flow,
            self.server_state.default_headers,
            keep_alive=http_version != "1.0" and self.parser.should_keep_alive(),
            on_response=self.on_response_complete,
        )
        self.cycle = exchange  # type: ignore[assignment]
        if existing is None or existing.response_complete:
            self._start_asgi_task(exchange, self.app)  # type: ignore[arg-type]
        else:
            # A pipelined request waits for the one before it (uvicorn starts it then).
            self.flow.pause_reading()
            self.pipeline.appendleft((exchange, self.app))  # type: ignore[arg-type]
