"""One pipelined Redis connection for the hot path, speaking RESP on a bare asyncio protocol.

Every request makes two script calls (admit, settle). Through redis-py each call paid its
stream reader, a timeout context per read and a task to run the settle beside the usage append;
here a call is a write and a future. Commands issued while replies are pending are corked and
written together once per loop iteration; Redis answers in order, so replies resolve the
futures first in, first out. A lone command on an idle connection is written at once.

Failure handling is per connection, not per command: a connection that breaks, or that has
commands pending and hears nothing for `socket_timeout` seconds (the URL's, else 5), is closed
and every pending command fails (`ConnectionError`, `TimeoutError`); the next command connects
again.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any

import hiredis
import redis.asyncio as redis
from redis.asyncio.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.metrics import REDIS_BATCH_SIZE


def pack_command(*parts: bytes | str | int) -> bytes:
    values = [
        p.encode() if isinstance(p, str) else b"%d" % p if isinstance(p, int) else p for p in parts
    ]
    return b"*%d\r\n" % len(values) + b"".join(b"$%d\r\n%b\r\n" % (len(v), v) for v in values)


class RedisAddress:
    """Where and how to connect: read off a redis-py client, so one URL configures both."""

    def __init__(self, client: redis.Redis) -> None:
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        self.path: str | None = kwargs.get("path")
        self.host: str = kwargs.get("host", "localhost")
        self.port: int = int(kwargs.get("port", 6379))
        self.db = int(kwargs.get("db", 0) or 0)
        self.username: str | None = kwargs.get("username")
        self.password: str | None = kwargs.get("password")
        self.connect_timeout: float = kwargs.get("socket_connect_timeout") or 5.0
        # How long pending commands may go unanswered (`?socket_timeout=` in the URL).
        self.reply_timeout: float = kwargs.get("socket_timeout") or 5.0
        self.ssl: ssl.SSLContext | None = None
        if issubclass(pool.connection_class, SSLConnection):  # a rediss:// URL
            # redis-py's own TLS settings for it (verification, hostname check, client
            # certificate), so that this connection trusts exactly what the client does.
            connection = pool.make_connection()  # type: ignore[no-untyped-call]
            self.ssl = connection.ssl_context.get()

    def handshake(self) -> list[bytes]:
        """AUTH and SELECT, sent ahead of the first commands of a new connection."""
        commands = []
        if self.password is not None:
            if self.username:
                commands.append(pack_command("AUTH", self.username, self.password))
            else:
                commands.append(pack_command("AUTH", self.password))
        if self.db:
            commands.append(pack_command("SELECT", self.db))
        return commands


class _Protocol(asyncio.Protocol):
    def __init__(self, pipe: RedisPipe) -> None:
        self._pipe = pipe
        self._reader = hiredis.Reader(replyError=ResponseError)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiting = self._pipe._waiting
        self._pipe._heard = self._pipe._loop.time()
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self._pipe._fail(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not waiting:  # a reply nobody asked for: the connection is out of step
                self._pipe._fail(RedisConnectionError("Redis sent an unexpected reply"))
                return
            future = waiting.popleft()
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, ResponseError):
                message = str(reply)
                if message.startswith("NOSCRIPT"):
                    reply = NoScriptError(message)
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pipe._lost(self, exc)


class RedisPipe:
    """Commands in, replies out, in order, on one connection (see the module docstring)."""

    def __init__(self, address: RedisAddress) -> None:
        self._address = address
        self._reply_timeout = address.reply_timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._out: list[bytes] = []  # written at the next flush
        self._waiting: deque[asyncio.Future[Any]] = deque()  # in the order Redis answers
        self._flushing = False
        self._watchdog: asyncio.TimerHandle | None = None
        self._heard = 0.0  # loop time of the last reply bytes (or of the last idle -> busy)
        self._closed = False

    def request(self, command: bytes, *, cork: bool = False) -> asyncio.Future[Any]:
        """Queue one packed command; the future resolves with its reply.

        `cork` holds the command until the end of this loop iteration even on an idle
        connection, so that other writes of the caller (the usage append) go out first.
        """
        if self._closed:
            raise RedisConnectionError("the Redis pipe is closed")
        future = self._loop.create_future()
        if not self._waiting:
            self._heard = self._loop.time()
        self._waiting.append(future)
        self._out.append(command)
        if self._transport is None:
            if self._connecting is None:
                self._connecting = self._loop.create_task(self._connect())
        elif not cork and len(self._waiting) == 1:
            self._flush()
        elif not self._flushing:
            self._flushing = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flushing = False
        transport = self._transport
        if transport is None or not self._out:
            return
        out, self._out = self._out, []
        REDIS_BATCH_SIZE.observe(len(out))
        transport.write(out[0] if len(out) == 1 else b"".join(out))
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._reply_timeout, self._check)

    def _check(self) -> None:
        """No reply for `reply_timeout` while commands wait: Redis is gone or stuck."""
        self._watchdog = None
        if not self._waiting:
            return
        silent = self._loop.time() - self._heard
        if silent >= self._reply_timeout:
            self._fail(RedisTimeoutError(f"no reply from Redis for {silent:.1f} s"))
        else:
            self._watchdog = self._loop.call_later(self._reply_timeout - silent, self._check)

    async def _connect(self) -> None:
        address = self._address
        try:
            async with asyncio.timeout(address.connect_timeout):
                if address.path:
                    transport, protocol = await self._loop.create_unix_connection(
                        lambda: _Protocol(self), address.path
                    )
                else:
                    transport, protocol = await self._loop.create_connection(
                        lambda: _Protocol(self),
                        address.host,
                        address.port,
                        ssl=address.ssl,
                        server_hostname=address.host if address.ssl else None,
                    )
        except (OSError, TimeoutError) as exc:
            self._connecting = None
            self._fail(RedisConnectionError(f"cannot connect to Redis: {exc!r}"))
            return
        self._connecting = None
        if self._closed:
            transport.close()
            return
        self._transport = transport
        self._protocol = protocol
        handshake = address.handshake()
        if handshake:
            # Their replies come first; a refused AUTH shows in the commands' own replies.
            futures = [self._loop.create_future() for _ in handshake]
            for future in futures:
                future.add_done_callback(ignore_result)
            self._waiting.extendleft(reversed(futures))
            self._out[:0] = handshake
        self._heard = self._loop.time()
        self._flush()

    def _fail(self, exc: Exception) -> None:
        """Close the connection and fail every pending command with `exc`."""
        transport, self._transport, self._protocol = self._transport, None, None
        waiting, self._waiting = self._waiting, deque()
        self._out = []
        if transport is not None:
            transport.abort()
        for future in waiting:
            if not future.done():
                future.set_exception(exc)

    def _lost(self, protocol: _Protocol, exc: Exception | None) -> None:
        if protocol is self._protocol:
            self._fail(RedisConnectionError(f"lost the connection to Redis: {exc!r}"))

    async def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._fail(RedisConnectionError("the Redis pipe is closed"))


def ignore_result(future: asyncio.Future[Any]) -> None:
    """A done-callback for a reply nobody waits for: its error is not "never retrieved"."""
    if not future.cancelled():
        future.exception()
