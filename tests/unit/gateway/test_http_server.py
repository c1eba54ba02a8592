"""The gateway's HTTP protocol sends a response's head together with its body, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.http_server import _HeadHoldingTransport


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
