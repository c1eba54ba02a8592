"""The gateway's own HTTP exchange for `/v1/*` (gateway.http_server) on the wire: raw bytes in,
responses parsed by h11 (an independent HTTP/1.1 implementation) out."""

from __future__ import annotations

import asyncio

import asyncpg
import h11
import msgspec

from tests.fixtures.gateway import GatewayServer
from tests.integration.gateway.conftest import World
from tests.integration.gateway.test_openai_client import MESSAGES, usage_events


async def exchange(
    server: GatewayServer, raw: bytes, responses: int, *, http_version: bytes = b"1.1"
) -> tuple[list[tuple[h11.Response, bytes]], bool]:
    """Write `raw` at once; read `responses` responses. Also tells whether the server then
    closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(raw)
    client = h11.Connection(h11.CLIENT)

    def expect_response() -> None:
        # h11 reads a response only to a request it saw: tell it of the next one written raw.
        client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        client.send(h11.EndOfMessage())

    expect_response()
    results: list[tuple[h11.Response, bytes]] = []
    head: h11.Response | None = None
    body = b""
    closed = False
    while len(results) < responses:
        event = client.next_event()
        if event is h11.NEED_DATA:
            data = await asyncio.wait_for(reader.read(65536), 30)
            client.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            head, body = event, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            results.append((head, body))
            if len(results) < responses:
                client.start_next_cycle()
                expect_response()
    if http_version == b"1.0" or any(
        name == b"connection" and value == b"close" for name, value in results[-1][0].headers
    ):
        closed = await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()
    return results, closed


def header(response: h11.Response, name: bytes) -> bytes | None:
    return next((v for k, v in response.headers if k == name), None)


def chat_request(world: World, *, version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    body = msgspec.json.encode({"model": world.model, "messages": MESSAGES})
    return (
        b"POST /v1/chat/completions?ignored=1 HTTP/" + version + b"\r\nhost: x\r\n"
        b"authorization: Bearer " + world.key.encode() + b"\r\n"
        b"content-type: application/json\r\n" + extra + b"content-length: %d\r\n\r\n" % len(body)
    ) + body


async def test_pipelined_requests_are_answered_in_order_on_one_connection(
    world: World, gateway_server: GatewayServer, pool: asyncpg.Pool
) -> None:
    models = b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-api-key: " + world.key.encode() + b"\r\n\r\n"
    results, closed = await exchange(
        gateway_server, chat_request(world) + models + chat_request(world), 3
    )
    assert [r.status_code for r, _ in results] == [200, 200, 200]
    first, listing, second = (msgspec.json.decode(body) for _, body in results)
    assert first["object"] == second["object"] == "chat.completion"
    assert [m["id"] for m in listing["data"]] == [world.model]
    ids = [header(r, b"x-request-id") for r, _ in results]
    assert len(set(ids)) == 3 and all(ids)
    # Each response carries exactly its body's length, and its charge.
    for response, body in results:
        assert header(response, b"content-length") == b"%d" % len(body)
        assert header(response, b"date") is not None
    assert header(results[0][0], b"x-tally-charge-nano") == b"%d" % first["usage"]["cost_nano"]
    assert not closed
    assert len(await usage_events(pool)) == 2


async def test_http_1_0_and_connection_close_are_answered_then_closed(
    world: World, gateway_server: GatewayServer
) -> None:
    for raw in (
        chat_request(world, version=b"1.0"),
        chat_request(world, extra=b"connection: close\r\n"),
    ):
        results, closed = await exchange(gateway_server, raw, 1)
        [(response, body)] = results
        assert response.status_code == 200
        assert header(response, b"connection") == b"close"
        assert msgspec.json.decode(body)["object"] == "chat.completion"
        assert closed


async def test_a_chunked_request_body_is_read_whole(
    world: World, gateway_server: GatewayServer
) -> None:
    body = msgspec.json.encode({"model": world.model, "messages": MESSAGES})
    chunks = b"".join(b"%x\r\n%b\r\n" % (len(part), part) for part in (body[:7], body[7:]))
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
        b"authorization: Bearer " + world.key.encode() + b"\r\n"
        b"transfer-encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    [(response, answer)], _ = await exchange(gateway_server, raw, 1)
    assert response.status_code == 200
    assert msgspec.json.decode(answer)["object"] == "chat.completion"


async def test_a_stream_is_chunked_and_ends_with_the_zero_chunk(
    world: World, gateway_server: GatewayServer
) -> None:
    body = msgspec.json.encode({"model": world.model, "messages": MESSAGES, "stream": True})
    raw = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"
        b"authorization: Bearer " + world.key.encode() + b"\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    ) + body
    # Then a second request on the same connection: the stream's end was framed right.
    [(response, events), (after, _)], _ = await exchange(
        gateway_server, raw + chat_request(world), 2
    )
    assert response.status_code == 200
    assert header(response, b"transfer-encoding") == b"chunked"
    assert header(response, b"content-type") == b"text/event-stream; charset=utf-8"
    assert events.endswith(b"data: [DONE]\n\n")
    assert after.status_code == 200


async def test_head_and_other_methods_get_the_generic_path_and_a_bodyless_405(
    world: World, gateway_server: GatewayServer
) -> None:
    raw = b"HEAD /v1/models HTTP/1.1\r\nhost: x\r\n\r\n" + chat_request(world)
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="HEAD", target="/v1/models", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_server.port)
    writer.write(raw)
    events = []
    while not events or not isinstance(events[-1], h11.EndOfMessage):
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(await asyncio.wait_for(reader.read(65536), 30))
        else:
            events.append(event)
    assert events[0].status_code == 405
    assert not any(isinstance(e, h11.Data) and e.data for e in events)
    writer.close()


async def test_a_path_that_is_not_ascii_gets_400_and_nothing_else_breaks(
    world: World, gateway_server: GatewayServer
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_server.port)
    writer.write(b"POST /v1/chat/\xff\xfe HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}")
    answer = await asyncio.wait_for(reader.read(), 30)  # answered, then closed
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    # The gateway serves the next connection as usual.
    [(response, _)], _ = await exchange(gateway_server, chat_request(world), 1)
    assert response.status_code == 200
