"""Event-log storage: bytes on disk per usage event (table and each index), for sizing Postgres.

Appends `--events` real `UsageRecorded` events (the gateway's one event per request, with every
optional field filled in, so an upper bound) spread over `--tenants` tenants, in group-commit
sized batches, then measures the `events` table and its indexes after VACUUM.

Rerun: make bench-eventlog-storage   (or: .venv/bin/python -m bench.eventlog.storage)
Uses a throwaway database on TALLY_BENCH_PG_ADMIN_URL (default: local Postgres on :5432).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from datetime import UTC, datetime

import asyncpg

from tally.eventlog import NewEvent, append_events
from tally.events.billing import UsageRecorded
from tally.migrations import apply_migrations
from tally.pricing import TokenUsage

ADMIN_URL = os.environ.get(
    "TALLY_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
BATCH = 2048  # TALLY_EVENT_BATCH_MAX's default: the largest group-commit batch

_SIZES = """
SELECT pg_relation_size('events') AS heap,
       pg_total_relation_size('events') AS total,
       coalesce(pg_relation_size(reltoastrelid), 0) AS toast
FROM pg_class WHERE relname = 'events'
"""
_INDEXES = """
SELECT indexrelid::regclass::text AS name, pg_relation_size(indexrelid) AS size
FROM pg_index WHERE indrelid = 'events'::regclass ORDER BY name
"""


def usage_event(tenant: uuid.UUID, key: uuid.UUID, i: int) -> tuple[UsageRecorded, str]:
    request_id = uuid.uuid4().hex  # what the gateway puts in x-request-id
    event = UsageRecorded(
        request_id=request_id,
        tenant_id=tenant,
        key_id=key,
        model="gpt-4o-mini",
        endpoint="/v1/chat/completions",
        usage=TokenUsage(
            input_tokens=1200 + i % 700,
            cached_input_tokens=256,
            output_tokens=300 + i % 500,
            reasoning_tokens=64,
        ),
        price_version=42,
        charge_nano=123_456_789 + i,
        base_nano=98_765_432 + i,
        status="ok",
        latency_ms=850 + i % 2000,
        occurred_at=datetime.now(UTC),
        provider="openai",
        credential_id=uuid.uuid4(),
        route_id=uuid.uuid4(),
        upstream_model="gpt-4o-mini-2024-07-18",
        ttft_ms=210 + i % 300,
    )
    return event, f"usage:{request_id}"


async def main(events: int, tenants: int) -> None:
    name = f"tally_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        await apply_migrations(url)
        conn = await asyncpg.connect(url)
        server = await conn.fetchval("SHOW server_version")
        keys = {uuid.uuid4(): uuid.uuid4() for _ in range(tenants)}
        tenant_list = list(keys)
        done = 0
        while done < events:
            batch = []
            for i in range(done, min(done + BATCH, events)):
                tenant = tenant_list[i % tenants]
                event, idempotency_key = usage_event(tenant, keys[tenant], i)
                batch.append(NewEvent(event, idempotency_key))
            async with conn.transaction():
                await append_events(conn, batch)
            done += len(batch)
        await conn.execute("VACUUM ANALYZE events")
        sizes = await conn.fetchrow(_SIZES)
        indexes = await conn.fetch(_INDEXES)
        payload = await conn.fetchval("SELECT avg(octet_length(data::text)) FROM events")
        await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()

    def per_event(size: int) -> str:
        return f"{size / events:>7.0f} B/event {size * 1e7 / events / 2**30:>7.2f} GiB/10M"

    print(f"Postgres {server}; {events:,} UsageRecorded events over {tenants:,} tenants")
    print(f"JSON payload: {payload:.0f} B/event on average\n")
    print(f"{'heap (table)':<34} {per_event(sizes['heap'])}")
    print(f"{'TOAST':<34} {per_event(sizes['toast'])}")
    for row in indexes:
        print(f"{'index ' + row['name']:<34} {per_event(row['size'])}")
    print(f"{'total (table + TOAST + indexes)':<34} {per_event(sizes['total'])}")
    print("\nrerun: make bench-eventlog-storage   (or .venv/bin/python -m bench.eventlog.storage)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.events, arguments.tenants))
