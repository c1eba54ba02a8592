"""Events used only by the event-log tests."""

from __future__ import annotations

from uuid import UUID

from tally.eventlog import Event


class WidgetCounted(Event, frozen=True):
    """A test fact: writer `writer` counted widget number `n`."""

    writer: int
    n: int
    tenant_id: UUID | None = None
    note: str = ""
