"""Cursor pagination: opaque cursors that carry the sort key of the last row of a page.

Keyset pagination (`WHERE (created_at, id) < ($cursor)`) stays fast on any page and never skips
or repeats a row when rows are added between two pages, unlike OFFSET.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec

from tally.errors import InvalidRequest

DEFAULT_LIMIT = 50
MAX_LIMIT = 200

# The `limit` query parameter every list route takes.
Limit = Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT)]


def encode_cursor(*key: Any) -> str:
    """An opaque cursor for the sort key `key` (datetimes, UUIDs, ints, strings)."""
    return base64.urlsafe_b64encode(msgspec.json.encode(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str, *types: type[Any]) -> tuple[Any, ...]:
    """The sort key inside `cursor`, converted to `types`; a bad cursor is a 400 on `cursor`."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = msgspec.json.decode(raw, type=list[Any])
        if len(values) != len(types):
            raise ValueError("wrong arity")
        return tuple(msgspec.convert(v, t) for v, t in zip(values, types, strict=True))
    except (binascii.Error, ValueError, msgspec.ValidationError, msgspec.DecodeError):
        raise InvalidRequest("malformed cursor", param="cursor") from None


def created_cursor(created_at: datetime, object_id: UUID) -> str:
    return encode_cursor(created_at, object_id)


def decode_created_cursor(cursor: str | None) -> tuple[datetime, UUID] | None:
    if cursor is None:
        return None
    created_at, object_id = decode_cursor(cursor, datetime, UUID)
    return created_at, object_id
