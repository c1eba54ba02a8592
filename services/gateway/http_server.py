"""uvicorn's httptools protocol, sending a response's head and body in one write.

uvicorn writes the status line and headers on `http.response.start` and the body on
`http.response.body`: two `send` system calls per response, each one a full trip through the
loopback TCP stack that wakes the client. The gateway's flows send both back to back, so the
transport below holds a head until the next write (the body) and sends the two together; a head
with no body right behind it (a stream waiting on its provider) goes out on the next loop
iteration. Order of bytes is never changed, only when they are handed to the kernel.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


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


class GatewayHttpProtocol(HttpToolsProtocol):
    """`tally serve gateway`'s HTTP protocol (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        proxy = _HeadHoldingTransport(transport, self.loop)
        super().connection_made(proxy)  # type: ignore[arg-type]
