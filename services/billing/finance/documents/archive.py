"""A ZIP archive written as a stream: each member is handed out as soon as it is added.

zipfile writes to any object with `write()`; on one that cannot seek it uses data descriptors,
so the archive never has to be held or rewound. Members are stored deflated.
"""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TypeVar

T = TypeVar("T")


class _Sink:
    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


class StreamingZip:
    """`add()` members, `take()` the bytes written so far, `close()` then `take()` the rest."""

    def __init__(self) -> None:
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(self._sink, mode="w", compression=zipfile.ZIP_DEFLATED)

    def add(self, name: str, data: bytes, modified: datetime) -> None:
        info = zipfile.ZipInfo(name, date_time=modified.timetuple()[:6])
        info.compress_type = zipfile.ZIP_DEFLATED
        self._zip.writestr(info, data)

    def take(self) -> bytes:
        return self._sink.take()

    def close(self) -> bytes:
        self._zip.close()
        return self._sink.take()


async def zip_of_pdfs(
    items: AsyncIterator[T], render: Callable[[T], bytes], name_of: Callable[[T], str]
) -> AsyncIterator[bytes]:
    """A ZIP with one PDF per item, streamed: one rendered PDF is held at a time."""
    archive = StreamingZip()
    modified = datetime.now(UTC)
    async for item in items:
        # Rendering is CPU work: off the event loop.
        pdf = await asyncio.to_thread(render, item)
        archive.add(name_of(item), pdf, modified)
        chunk = archive.take()
        if chunk:
            yield chunk
    yield archive.close()
