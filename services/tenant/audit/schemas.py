"""Responses of the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec


class AuditEvent(msgspec.Struct, frozen=True):
    """One event of the log: what happened, to which tenant, by whom, and its details.

    `data` is the event as stored, with any field that could hold a secret redacted (events
    are written without secrets; the redaction is a second line of defence).
    """

    position: int
    type: str
    tenant_id: UUID | None
    recorded_at: datetime
    actor: dict[str, Any] | None
    data: dict[str, Any]


class AuditPage(msgspec.Struct, frozen=True):
    data: list[AuditEvent]
    next_cursor: str | None


class AuditQuery(msgspec.Struct, frozen=True):
    tenant_id: UUID | None = None
    types: list[str] | None = None
    actor_id: str | None = None
    actor_kind: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    cursor: str | None = None
    limit: int = 50
