"""Audit-log logic: filter and page the event log, redact anything secret-shaped."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import msgspec

from tally.db import Connection
from tally.errors import InvalidRequest
from tally.eventlog import Event
from tenant.audit import repository
from tenant.audit.schemas import AuditEvent, AuditPage, AuditQuery
from tenant.pagination import decode_cursor, encode_cursor

# Field names whose values are withheld wherever they appear in an event.
REDACTED_FIELDS = frozenset(
    {
        "api_key",
        "key",
        "key_hash",
        "secret",
        "secret_access_key",
        "access_key_id",
        "password",
        "password_hash",
        "token",
        "token_hash",
        "refresh_token",
        "access_token",
        "secret_ciphertext",
        "authorization",
    }
)
REDACTED = "[redacted]"


@lru_cache(maxsize=1)
def known_event_types() -> frozenset[str]:
    import tally.events  # noqa: F401  (registers every domain's events)

    names: set[str] = set()
    pending: list[type[Event]] = list(Event.__subclasses__())
    while pending:
        cls = pending.pop()
        names.add(cls.__name__)
        pending.extend(cls.__subclasses__())
    return frozenset(names)


def redact(value: Any) -> Any:
    """A copy of `value` with every secret-named field replaced by "[redacted]"."""
    if isinstance(value, dict):
        return {k: REDACTED if k in REDACTED_FIELDS else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


class AuditService:
    async def list_events(self, conn: Connection, query: AuditQuery) -> AuditPage:
        """Events newest first, filtered by tenant, type, actor and time range."""
        if query.types:
            unknown = sorted(set(query.types) - known_event_types())
            if unknown:
                raise InvalidRequest(f"unknown event type {unknown[0]!r}", param="type")
        before = decode_cursor(query.cursor, int)[0] if query.cursor else None
        rows = await repository.list_events(
            conn,
            tenant_id=query.tenant_id,
            types=list(query.types) if query.types else None,
            actor_id=query.actor_id,
            actor_kind=query.actor_kind,
            since=query.since,
            until=query.until,
            before_position=before,
            limit=query.limit + 1,
        )
        events = []
        for row in rows[: query.limit]:
            data = msgspec.json.decode(row["data"])
            data.pop("type", None)
            actor = data.get("actor")
            events.append(
                AuditEvent(
                    position=row["position"],
                    type=row["type"],
                    tenant_id=row["tenant_id"],
                    recorded_at=row["recorded_at"],
                    actor=actor if isinstance(actor, dict) else None,
                    data=redact(data),
                )
            )
        more = len(rows) > query.limit and events
        return AuditPage(
            data=events, next_cursor=encode_cursor(events[-1].position) if more else None
        )


audit_service = AuditService()
