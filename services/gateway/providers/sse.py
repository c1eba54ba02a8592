"""Incremental Server-Sent Events parsing for adapters whose providers stream SSE.

Bytes arrive split anywhere (inside a line, inside a UTF-8 sequence); `SSEDecoder.feed` keeps
the partial tail and returns only complete events. Lines end with LF, CRLF or a bare CR, and
comment lines (`: keep-alive`, `: OPENROUTER PROCESSING`) are dropped, as the SSE specification
says.
"""

from __future__ import annotations

import msgspec


class SSEEvent(msgspec.Struct, frozen=True):
    """One dispatched event: its `event:` name (empty when unnamed) and joined `data:` lines."""

    event: str
    data: bytes


class SSEDecoder:
    def __init__(self) -> None:
        self._buffer = b""
        self._event = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Complete events found in everything fed so far; the partial tail is kept."""
        buffer = self._buffer + chunk if self._buffer else chunk
        events: list[SSEEvent] = []
        position = 0
        while True:
            newline = buffer.find(b"\n", position)
            if newline < 0:
                break
            line = buffer[position:newline]
            # The common case, one `data:` line and a blank line, skips the general parser.
            if (
                not self._data
                and not self._event
                and line.startswith(b"data: ")
                and b"\r" not in line
                and buffer.startswith(b"\n", newline + 1)
            ):
                events.append(SSEEvent("", line[6:]))
                position = newline + 2
                continue
            position = newline + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if b"\r" in line:
                # A bare CR ends a line too (the SSE specification allows all three endings).
                for part in line.split(b"\r"):
                    self._line(part, events)
            else:
                self._line(line, events)
        self._buffer = buffer[position:]
        return events

    def flush(self) -> list[SSEEvent]:
        """At EOF: an unterminated last line and a pending event still count."""
        events: list[SSEEvent] = []
        if self._buffer:
            line, self._buffer = self._buffer.rstrip(b"\r"), b""
            for part in line.split(b"\r"):
                self._line(part, events)
        self._line(b"", events)
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data or self._event:
                name = self._event.decode(errors="replace")
                events.append(SSEEvent(name, b"\n".join(self._data)))
            self._event, self._data = b"", []
            return
        if line.startswith(b":"):
            return
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event":
            self._event = value
