"""The AWS event-stream binary framing (`application/vnd.amazon.eventstream`), decoded.

Each message: a 12-byte prelude (total length, headers length, CRC32 of those 8 bytes), typed
headers, a payload, and a CRC32 of everything before it. botocore's `EventStreamBuffer` does the
parsing and both CRC checks and buffers partial frames; this module only turns its messages
into the three facts the Bedrock translator needs.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec
from botocore.eventstream import EventStreamBuffer, ParserError


class StreamMessage(msgspec.Struct, frozen=True):
    message_type: str  # "event", "exception" or "error"
    event_type: str  # the event or exception name, e.g. "contentBlockDelta"
    headers: dict[str, Any]
    payload: bytes


class EventStreamDecoder:
    """Feed bytes cut anywhere; get the whole messages they complete."""

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        # Set when a frame failed its CRC or length checks: nothing after it can be located.
        self.corrupt: str | None = None

    def feed(self, data: bytes) -> list[StreamMessage]:
        """The messages completed by `data`; those before a corrupt frame are still returned."""
        if self.corrupt is not None:
            return []
        self._buffer.add_data(data)
        messages: list[StreamMessage] = []
        try:
            for message in self._buffer:
                # botocore-stubs types the parsed headers as int; they are a dict.
                headers = dict(cast(dict[str, Any], message.headers))
                message_type = str(headers.get(":message-type", "event"))
                name = (
                    headers.get(":event-type")
                    or headers.get(":exception-type")
                    or headers.get(":error-code", "")
                )
                messages.append(StreamMessage(message_type, str(name), headers, message.payload))
        except ParserError as exc:
            self.corrupt = str(exc) or type(exc).__name__
        return messages
