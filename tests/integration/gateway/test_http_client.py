"""gateway.http_client against a real socket server whose bytes each test writes by hand.

The server is a plain asyncio server on loopback; each test scripts what the "provider" sends,
so keep-alive, chunking, compression, timeouts, broken connections and TLS are checked on the
wire, not against another client library's idea of them.
"""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.http_client import HttpClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Wire:
    """A scripted provider: counts connections and keeps every request head it read."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.port = 0

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = await reader.readexactly(length)
        self.requests.append((head, body))
        return head

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        finally:
            writer.close()


@asynccontextmanager
async def provider(
    script: Callable[[Wire], Handler], tls: ssl.SSLContext | None = None
) -> AsyncIterator[Wire]:
    wire = Wire(lambda r, w: asyncio.sleep(0))
    wire.handler = script(wire)
    server = await asyncio.start_server(wire.serve, "127.0.0.1", 0, ssl=tls)
    wire.port = server.sockets[0].getsockname()[1]
    try:
        yield wire
    finally:
        server.close()


def ok(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += b"".join(h + b"\r\n" for h in extra)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


def keep_answering(answer: bytes) -> Callable[[Wire], Handler]:
    def script(wire: Wire) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await wire.read_request(reader) is not None:
                writer.write(answer)
                await writer.drain()

        return handle

    return script


def client(**options: float) -> HttpClient:
    return HttpClient(
        connect_timeout_s=options.get("connect", 2.0), read_timeout_s=options.get("read", 2.0)
    )


async def test_requests_reuse_one_connection_and_carry_the_request_as_given() -> None:
    async with provider(keep_answering(ok(b'{"ok":true}'))) as wire:
        http = client()
        url = f"http://127.0.0.1:{wire.port}/v1/chat/completions?x=1"
        for n in range(3):
            response = await http.request(
                "POST", url, {"Authorization": "Bearer sk-1", "X-N": str(n)}, b'{"a":1}'
            )
            assert response.status == 200
            assert response.headers["content-type"] == "application/json"
            assert await response.read() == b'{"ok":true}'
            response.release()
        await http.close()
    assert wire.connections == 1
    head, body = wire.requests[2]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v1/chat/completions?x=1 HTTP/1.1"
    assert f"Host: 127.0.0.1:{wire.port}" in lines
    assert "Authorization: Bearer sk-1" in lines
    assert "X-N: 2" in lines
    assert "Content-Length: 7" in lines
    assert body == b'{"a":1}'


async def test_chunked_and_gzip_bodies_arrive_decoded() -> None:
    text = b'{"choices":[' + b'{"x":"lighthouse"},' * 500 + b"{}]}"
    packed = gzip.compress(text)
    chunked = b"".join(
        b"%x\r\n%s\r\n" % (len(packed[i : i + 700]), packed[i : i + 700])
        for i in range(0, len(packed), 700)
    )
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"0\r\n\r\n"
    )
    async with provider(keep_answering(answer)) as wire:
        http = client()
        for _ in range(2):
            response = await http.request("POST", f"http://127.0.0.1:{wire.port}/", {}, b"")
            assert await response.read() == text
            response.release()
        await http.close()
    assert wire.connections == 1


async def test_a_connection_the_provider_closed_while_idle_is_replaced() -> None:
    def script(wire: Wire) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # Keep-alive announced, then the connection is dropped after one answer, as a
            # provider's idle timeout does.
            if await wire.read_request(reader) is not None:
                writer.write(ok(b"first"))
                await writer.drain()

        return handle

    async with provider(script) as wire:
        http = client()
        url = f"http://127.0.0.1:{wire.port}/"
        first = await http.request("POST", url, {}, b"1")
        assert await first.read() == b"first"
        first.release()
        # The server closes the connection before the next request; the write can still
        # "succeed" locally, so the failure shows while waiting for the answer.
        second = await http.request("POST", url, {}, b"2")
        assert await second.read() == b"first"
        second.release()
        await http.close()
    assert wire.connections == 2
    assert [body for _, body in wire.requests] == [b"1", b"2"]


async def test_connection_close_is_honoured_and_an_unread_body_is_not_reused() -> None:
    # The second body is too large to have arrived whole when it is released unread.
    answers = [ok(b"closing", b"Connection: close"), ok(b"x" * 2**21), ok(b"third")]

    def script(wire: Wire) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while await wire.read_request(reader) is not None:
                writer.write(answers[len(wire.requests) - 1])
                try:
                    await writer.drain()
                except ConnectionError:
                    return

        return handle

    async with provider(script) as wire:
        http = client()
        url = f"http://127.0.0.1:{wire.port}/"
        response = await http.request("POST", url, {}, b"")
        assert await response.read() == b"closing"
        response.release()
        response = await http.request("POST", url, {}, b"")
        response.release()  # body left unread: the connection cannot carry another request
        response = await http.request("POST", url, {}, b"")
        assert await response.read() == b"third"
        response.release()
        await http.close()
    assert wire.connections == 3


async def test_read_timeouts_before_the_head_and_between_chunks() -> None:
    def script(wire: Wire) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await wire.read_request(reader)
            assert head is not None
            if b"/stall-head" in head:
                await asyncio.sleep(5)
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst part")
            await writer.drain()
            await asyncio.sleep(5)

        return handle

    async with provider(script) as wire:
        http = client(read=0.3)
        with pytest.raises(TimeoutError):
            await http.request("POST", f"http://127.0.0.1:{wire.port}/stall-head", {}, b"")
        response = await http.request("POST", f"http://127.0.0.1:{wire.port}/stall-body", {}, b"")
        assert await response.readany() == b"first part"
        with pytest.raises(TimeoutError):
            await response.readany()
        response.release()
        await http.close()


async def test_a_body_cut_off_or_a_malformed_answer_raises_connection_error() -> None:
    def script(wire: Wire) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await wire.read_request(reader)
            assert head is not None
            if b"/garbage" in head:
                writer.write(b"SMTP ready\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
            await writer.drain()

        return handle

    async with provider(script) as wire:
        http = client()
        response = await http.request("POST", f"http://127.0.0.1:{wire.port}/cut", {}, b"")
        with pytest.raises(ConnectionError):
            await response.read()
        response.release()
        with pytest.raises(ConnectionError, match="malformed"):
            await http.request("POST", f"http://127.0.0.1:{wire.port}/garbage", {}, b"")
        await http.close()


async def test_refused_connections_and_header_injection_fail_before_sending() -> None:
    async with provider(keep_answering(ok(b"{}"))) as wire:
        http = client()
        with pytest.raises(ConnectionError, match="line break"):
            await http.request(
                "POST", f"http://127.0.0.1:{wire.port}/", {"x-key": "a\r\nX-Evil: 1"}, b""
            )
        await http.close()
    assert wire.requests == []
    http = client()
    with pytest.raises(ConnectionRefusedError):  # nothing listens there any more
        await http.request("POST", f"http://127.0.0.1:{wire.port}/", {}, b"")
    await http.close()


async def test_a_large_body_read_slowly_arrives_whole() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB, past the pause threshold several times
    async with provider(keep_answering(ok(body))) as wire:
        http = client()
        response = await http.request("POST", f"http://127.0.0.1:{wire.port}/", {}, b"")
        parts = []
        while data := await response.readany():
            parts.append(data)
            await asyncio.sleep(0.001)
        assert b"".join(parts) == body
        response.release()
        again = await http.request("POST", f"http://127.0.0.1:{wire.port}/", {}, b"")
        assert await again.read() == body
        again.release()
        await http.close()
    assert wire.connections == 1


async def test_closing_a_response_ends_a_read_waiting_on_it() -> None:
    def script(wire: Wire) -> Handler:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await wire.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await writer.drain()
            await asyncio.sleep(5)

        return handle

    async with provider(script) as wire:
        http = client(read=30)
        response = await http.request("POST", f"http://127.0.0.1:{wire.port}/", {}, b"")
        assert await response.readany() == b"hello"
        asyncio.get_running_loop().call_later(0.05, response.close)
        with pytest.raises(ConnectionError):
            await response.readany()
        response.release()
        await http.close()


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_https_verifies_the_provider_certificate() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _self_signed(Path(tmp))
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(cert, key)
        async with provider(keep_answering(ok(b"secure")), tls=server_tls) as wire:
            url = f"https://127.0.0.1:{wire.port}/v1/models"
            trusting = ssl.create_default_context(cafile=str(cert))
            http = HttpClient(connect_timeout_s=2, read_timeout_s=2, ssl_context=trusting)
            for _ in range(2):
                response = await http.request("GET", url, {}, b"")
                assert await response.read() == b"secure"
                response.release()
            await http.close()
            assert wire.connections == 1
            # The system's trust store does not know this certificate: refused, not sent.
            default = client()
            with pytest.raises(ssl.SSLCertVerificationError):
                await default.request("GET", url, {}, b"")
            await default.close()
        assert len(wire.requests) == 2
