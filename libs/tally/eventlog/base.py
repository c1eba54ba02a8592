"""The base of every event and the registry that decodes them.

Events are msgspec Structs in one tagged union: the tag (`type`) is the class name, a past-tense
statement of what happened (`UsageRecorded`). Each class carries its schema version; a change to
an event's fields bumps `schema_version` and adds an upcaster, so old log entries still decode.
Domain events live in `tally.events.<domain>` and subclass `Event`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar
from uuid import UUID

import msgspec


class Event(msgspec.Struct, tag_field="type", tag=True, kw_only=True, frozen=True):
    """Something that happened. Subclasses are immutable facts named in the past tense."""

    schema_version: ClassVar[int] = 1

    @property
    def event_tenant_id(self) -> UUID | None:
        """The tenant the event belongs to (folds shard on it); None for platform-wide facts."""
        tenant_id = getattr(self, "tenant_id", None)
        return tenant_id if isinstance(tenant_id, UUID) else None


EVENT_TYPES: dict[str, type[Event]] = {}

# (type name, stored version) -> function turning an old payload into the current one.
UPCASTERS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {}

_encoder = msgspec.json.Encoder()
_decoders: dict[str, msgspec.json.Decoder[Any]] = {}


def _register_all() -> None:
    import tally.events  # noqa: F401  (imports every domain's event module)

    pending: list[type[Event]] = list(Event.__subclasses__())
    while pending:
        cls = pending.pop()
        EVENT_TYPES[cls.__name__] = cls
        pending.extend(cls.__subclasses__())


def encode_event(event: Event) -> bytes:
    return _encoder.encode(event)


def decode_event(type_name: str, schema_version: int, data: bytes | str) -> Event:
    """Decode one stored event, upcasting payloads written by older schema versions."""
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        _register_all()
        cls = EVENT_TYPES.get(type_name)
        if cls is None:
            raise LookupError(f"unknown event type {type_name!r}: is its module imported?")
    if schema_version != cls.schema_version:
        payload = msgspec.json.decode(data)
        version = schema_version
        while version != cls.schema_version:
            upcast = UPCASTERS.get((type_name, version))
            if upcast is None:
                raise LookupError(f"no upcaster for {type_name} v{version}")
            payload = upcast(payload)
            version += 1
        return msgspec.convert(payload, cls)
    decoder = _decoders.get(type_name)
    if decoder is None:
        decoder = _decoders[type_name] = msgspec.json.Decoder(cls)
    event: Event = decoder.decode(data)
    return event
