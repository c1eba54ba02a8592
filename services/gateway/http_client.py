"""The gateway's HTTP/1.1 client for provider calls: keep-alive connections per origin, each an
asyncio protocol parsing with httptools.

Every paid request makes one provider call, so the client is on the hot path. aiohttp's client
spent ~67 µs of CPU per call here, this one ~20 µs (`bench/gateway/client.py`). It does what the
gateway needs and no more: one request at a time per connection, no redirects, cookies or
proxies; identity, gzip or deflate bodies; connect and read timeouts; TLS with the system's
default verification.

Failures surface as `TimeoutError` (connect or read timeout) or `OSError`: `ConnectionError`
for a connection that broke or a malformed answer, and whatever the socket layer raises while
connecting (refused, unresolvable, TLS). A connection reused from the pool that the provider had
already closed is retried once on a new one, before any byte of an answer arrived.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import Mapping
from typing import Any

import httptools
from yarl import URL

# Reading pauses while this much of a body waits for the gateway to take it (a slow client
# behind a fast provider); the provider then waits on TCP, not on the gateway's memory.
_HIGH_WATER = 256 * 1024
_MAX_IDLE_PER_ORIGIN = 512


class _Target:
    """What a URL needs for each request: its origin, and the request line and Host header."""

    __slots__ = ("host", "origin", "port", "prefix", "tls")

    def __init__(self, url: str) -> None:
        parsed = URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"not an http(s) URL: {url}")
        self.tls = parsed.scheme == "https"
        self.host = parsed.raw_host or parsed.host
        self.port = parsed.port or (443 if self.tls else 80)
        self.origin = (self.tls, self.host, self.port)
        host = f"[{self.host}]" if ":" in self.host else self.host
        if parsed.explicit_port:
            host = f"{host}:{self.port}"
        self.prefix = f" {parsed.raw_path_qs or '/'} HTTP/1.1\r\nHost: {host}\r\n"


class _Connection(asyncio.Protocol):
    """One keep-alive connection and the response being read on it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self._loop = loop
        self._read_timeout = read_timeout_s
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.head_done = False
        self.complete = False
        self.received = False
        self.keep_alive = False
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self._decoder: Any = None  # a zlib decompressor for gzip and deflate bodies

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(ConnectionError(f"malformed HTTP answer from the provider: {exc}"))

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.head_done and not self.complete and exc is None and self._until_close():
            self.complete = True  # a body delimited by the end of the connection
        elif not self.complete and self.error is None:
            self.error = ConnectionError(
                "the provider closed the connection"
                + ("" if exc is None else f" ({type(exc).__name__}: {exc})")
            )
        self._wake()

    # --- httptools callbacks -------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self.headers.get(key)
        self.headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        encoding = self.headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
        self.head_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                raise httptools.HttpParserError(f"undecodable body: {exc}") from None
        if body:
            self.chunks.append(body)
            self.buffered += len(body)
            if self.buffered > _HIGH_WATER and not self.paused and self.transport is not None:
                self.paused = True
                self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self.chunks.append(tail)
        self.complete = True
        self._wake()

    # --- used by the client and the response -------------------------------------------------

    def _until_close(self) -> bool:
        return "content-length" not in self.headers and "chunked" not in self.headers.get(
            "transfer-encoding", ""
        )

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    async def wait(self) -> None:
        """Until something arrives (or the read timeout, which breaks the connection)."""
        if self.error is not None:
            raise self.error
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(self._read_timeout, self._timed_out)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self.error is not None:
            raise self.error

    def _timed_out(self) -> None:
        self.fail(TimeoutError(f"no data from the provider for {self._read_timeout:g} s"))

    def take(self) -> bytes:
        chunks = self.chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()
        return data

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.keep_alive
            and self.error is None
            and self.transport is not None
            and not self.transport.is_closing()
        )


class Response:
    """A provider's answer: status and headers at once, the body read on demand.

    `release()` must follow (or `close()`): it returns the connection to the pool when the
    body was read to its end, and closes it otherwise.
    """

    __slots__ = ("_client", "_conn", "_origin", "headers", "status")

    def __init__(
        self, client: HttpClient, origin: tuple[bool, str, int], conn: _Connection
    ) -> None:
        self._client = client
        self._origin = origin
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.headers: Mapping[str, str] = conn.headers

    async def read(self) -> bytes:
        """The whole body."""
        parts: list[bytes] = []
        while True:
            data = await self.readany()
            if not data:
                return b"".join(parts)
            parts.append(data)

    async def readany(self) -> bytes:
        """What has arrived of the body (waiting for some if nothing has); b"" at its end."""
        conn = self._conn
        if conn is None:
            raise ConnectionError("the response was released")
        while True:
            if conn.chunks:
                return conn.take()
            if conn.complete:
                return b""
            await conn.wait()

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._put_back(self._origin, conn)

    def close(self) -> None:
        """Drop the connection now; a read waiting on it raises `ConnectionError`."""
        conn = self._conn
        if conn is not None:
            conn.fail(ConnectionError("the gateway closed the provider connection"))


class HttpClient:
    """Pooled keep-alive connections, per origin (scheme, host, port), for one event loop."""

    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        keepalive_s: float = 60.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout_s
        self._read_timeout = read_timeout_s
        self._keepalive = keepalive_s
        self._ssl = ssl_context
        self._idle: dict[tuple[bool, str, int], list[_Connection]] = {}
        self._targets: dict[str, _Target] = {}
        self._closed = False

    async def request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> Response:
        """Send the request; returns once the answer's status and headers arrived."""
        if self._closed:
            raise ConnectionError("the HTTP client is closed")
        target = self._target(url)
        head = [method, target.prefix]
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ConnectionError(f"the header {name!r} holds a line break")
            if name.lower() not in ("host", "content-length"):
                head.append(f"{name}: {value}\r\n")
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        message = "".join(head).encode() + body
        while True:
            conn, reused = await self._connection(target)
            conn._reset()
            assert conn.transport is not None
            conn.transport.write(message)
            try:
                while not conn.head_done:
                    await conn.wait()
            except ConnectionError:
                if reused and not conn.received:
                    continue  # the provider had closed this idle connection: a new one
                raise
            except BaseException:  # a timeout, or the caller cancelled: the answer is unread
                conn.fail(ConnectionError("the request was abandoned"))
                raise
            return Response(self, target.origin, conn)

    async def close(self) -> None:
        self._closed = True
        for connections in self._idle.values():
            for conn in connections:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            if len(self._targets) >= 1024:
                self._targets.clear()
            target = self._targets[url] = _Target(url)
        return target

    async def _connection(self, target: _Target) -> tuple[_Connection, bool]:
        idle = self._idle.get(target.origin)
        if idle:
            oldest = time.monotonic() - self._keepalive
            while idle:
                conn = idle.pop()
                if conn.idle_since >= oldest and conn.transport is not None:
                    if not conn.transport.is_closing():
                        return conn, True
                if conn.transport is not None:
                    conn.transport.close()
        loop = asyncio.get_running_loop()
        context = None
        if target.tls:
            context = self._ssl or _default_ssl_context()
        async with asyncio.timeout(self._connect_timeout):
            _, conn = await loop.create_connection(
                lambda: _Connection(loop, self._read_timeout),
                target.host,
                target.port,
                ssl=context,
                server_hostname=target.host if context is not None else None,
            )
        return conn, False

    def _put_back(self, origin: tuple[bool, str, int], conn: _Connection) -> None:
        if self._closed or not conn.reusable:
            if conn.transport is not None:
                conn.transport.close()
            return
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= _MAX_IDLE_PER_ORIGIN:
            conn.transport.close()  # type: ignore[union-attr]
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)


_SSL_CONTEXT: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT
