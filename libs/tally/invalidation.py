"""Cache invalidation across processes: one Redis pub/sub channel, small JSON messages.

Writers publish after their transaction commits; every gateway process subscribes and drops
the named entry from its in-process caches, so a revoked key stops working within a second.
"""

from __future__ import annotations

from typing import Literal

import msgspec
import redis.asyncio as redis

CHANNEL = "tally:invalidate"
Kind = Literal["api_key", "tenant", "credential", "model", "prices"]


class Invalidation(msgspec.Struct, frozen=True):
    kind: Kind
    # The id of the changed object (key id, tenant id, credential id, model name); "*" = all.
    id: str


async def publish_invalidation(client: redis.Redis, kind: Kind, object_id: str) -> None:
    await client.publish(CHANNEL, msgspec.json.encode(Invalidation(kind, object_id)))


def decode_invalidation(data: bytes) -> Invalidation:
    return msgspec.json.decode(data, type=Invalidation)
