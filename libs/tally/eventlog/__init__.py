"""The event log: typed events, idempotent appends, group commit, gap-safe reading."""

from tally.eventlog.appender import GroupCommitAppender
from tally.eventlog.base import EVENT_TYPES, Event, decode_event, encode_event
from tally.eventlog.reader import (
    Checkpoint,
    EventNotifier,
    ReadAhead,
    Shard,
    consume_batch,
    read_ahead,
    read_events,
)
from tally.eventlog.store import NOTIFY_CHANNEL, NewEvent, StoredEvent, append_events

__all__ = [
    "EVENT_TYPES",
    "NOTIFY_CHANNEL",
    "Checkpoint",
    "Event",
    "EventNotifier",
    "GroupCommitAppender",
    "NewEvent",
    "ReadAhead",
    "Shard",
    "StoredEvent",
    "append_events",
    "consume_batch",
    "decode_event",
    "encode_event",
    "read_ahead",
    "read_events",
]
