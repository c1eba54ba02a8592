"""The gateway's HTTP protocol sends a response's head together with its body, in order, both
through uvicorn's cycle (a head-holding transport) and through its own `/v1/*` exchange."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from uvicorn.protocols.http.flow_control import FlowControl

from gateway.http_server import Exchange, _HeadHoldingTransport


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writelines(self, lines: list[bytes]) -> None:
        self.writes.extend(lines)

    def close(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return f"info:{name}"


async def test_a_head_goes_out_with_the_body_that_follows_it() -> None:
    inner = RecordingTransport()
    transport = _HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert inner.writes == []
    transport.write(b"{}")
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
    assert len(inner.writes) == 1


async def test_a_head_without_a_body_behind_it_goes_out_on_the_next_loop_iteration() -> None:
    inner = RecordingTransport()
    transport = _HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    transport.write(b"5\r\nhello\r\n")
    assert inner.writes[-1] == b"5\r\nhello\r\n"


async def test_closing_sends_a_held_head_first_and_other_calls_reach_the_transport() -> None:
    inner = RecordingTransport()
    transport = _HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    transport.close()
    assert inner.writes == [b"HTTP/1.1 400 Bad Request\r\n\r\n"]
    assert inner.closed
    assert transport.get_extra_info("peername") == "info:peername"


async def test_writes_of_every_kind_keep_their_order() -> None:
    inner = RecordingTransport()
    transport = _HeadHoldingTransport(inner, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.writelines([b"a", b"b"])
    assert inner.writes == [b"HTTP/1.1 200 OK\r\n\r\n", b"a", b"b"]


def exchange_on(
    transport: RecordingTransport, *, keep_alive: bool = True
) -> tuple[Exchange, list[bool]]:
    """An exchange writing to `transport`, and the list its response completions land in."""
    completed: list[bool] = []
    exchange = Exchange(
        None,  # type: ignore[arg-type]  # the fast path and gateway are only used by run_asgi
        None,
        {},
        transport,  # type: ignore[arg-type]
        FlowControl(transport),  # type: ignore[arg-type]
        [(b"date", b"today")],
        keep_alive=keep_alive,
        on_response=lambda: completed.append(True),
    )
    return exchange, completed


async def test_an_exchange_writes_head_and_body_once_and_frames_a_stream() -> None:
    plain = RecordingTransport()
    exchange, completed = exchange_on(plain)
    await exchange.send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    assert plain.writes == []
    await exchange.send({"type": "http.response.body", "body": b"{}"})
    assert plain.writes == [b"HTTP/1.1 200 OK\r\ndate: today\r\ncontent-length: 2\r\n\r\n{}"]
    assert exchange.response_complete and completed == [True]

    # A stream whose first chunk is already here: head and chunk in one write.
    stream = RecordingTransport()
    exchange, completed = exchange_on(stream, keep_alive=False)
    await exchange.send({"type": "http.response.start", "status": 200, "headers": []})
    await exchange.send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
    assert stream.writes == [
        b"HTTP/1.1 200 OK\r\ndate: today\r\nconnection: close\r\ntransfer-encoding: chunked\r\n"
        b"\r\n9\r\ndata: 1\n\n\r\n"
    ]
    await exchange.send({"type": "http.response.body", "body": b""})
    assert stream.writes[-1] == b"0\r\n\r\n"
    assert stream.closed and completed == [True]


async def test_a_stream_head_waits_one_loop_iteration_at_most() -> None:
    transport = RecordingTransport()
    exchange, _ = exchange_on(transport)
    await exchange.send({"type": "http.response.start", "status": 200, "headers": []})
    assert transport.writes == []
    await asyncio.sleep(0)  # no chunk came in this iteration: the head goes out alone
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\ndate: today\r\ntransfer-encoding: chunked\r\n\r\n"
    ]
    await exchange.send({"type": "http.response.body", "body": b"x", "more_body": True})
    assert transport.writes[-1] == b"1\r\nx\r\n"


async def test_a_body_that_disagrees_with_its_content_length_closes_the_connection() -> None:
    transport = RecordingTransport()
    exchange, completed = exchange_on(transport)
    await exchange.send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    with pytest.raises(RuntimeError, match="content-length"):
        await exchange.send({"type": "http.response.body", "body": b"{}"})
    assert transport.closed and completed == []
