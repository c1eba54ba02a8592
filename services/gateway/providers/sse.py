"""An incremental Server-Sent Events decoder for upstream streams (Anthropic, Gemini).

Upstream bytes arrive cut at arbitrary points, including inside a line, inside a multi-byte
UTF-8 character or between the `\\r` and `\\n` of a line ending, so the decoder keeps the
unfinished tail and only decodes whole lines.
"""

from __future__ import annotations

import msgspec


class SSEEvent(msgspec.Struct, frozen=True):
    event: str  # the `event:` field; "message" when the server named none
    data: str


class SSEDecoder:
    """Feed bytes, get the events completed by them, in order."""

    def __init__(self) -> None:
        self._tail = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, data: bytes) -> list[SSEEvent]:
        buffer = self._tail + data
        events: list[SSEEvent] = []
        start = 0
        length = len(buffer)
        while start < length:
            newline = _next_line_end(buffer, start)
            if newline < 0:
                break
            end = newline
            if buffer[newline] == 0x0D:  # \r: a \r\n ending needs the next byte to tell
                if newline + 1 == length:
                    break
                step = 2 if buffer[newline + 1] == 0x0A else 1
            else:
                step = 1
            self._line(buffer[start:end].decode("utf-8", errors="replace"), events)
            start = end + step
        self._tail = buffer[start:]
        return events

    def flush(self) -> list[SSEEvent]:
        """At end of stream: the last line and event even without their terminators."""
        events: list[SSEEvent] = []
        if self._tail:
            tail = self._tail.rstrip(b"\r")
            self._tail = b""
            self._line(tail.decode("utf-8", errors="replace"), events)
        self._line("", events)
        return events

    def _line(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
            self._event, self._data = "", []
            return
        if line.startswith(":"):  # comment / keep-alive
            return
        field, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)


def _next_line_end(buffer: bytes, start: int) -> int:
    lf = buffer.find(b"\n", start)
    cr = buffer.find(b"\r", start)
    if cr < 0:
        return lf
    if lf < 0:
        return cr
    return min(cr, lf)
