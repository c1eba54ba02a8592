"""Event-log benchmark: append throughput (one event per transaction vs group commit) at 1, 16
and 256 concurrent appenders, and read throughput of the gap-safe reader.

Rerun: make bench-eventlog   (or: .venv/bin/python -m bench.eventlog.run [--seconds 5])
Uses a throwaway database on TALLY_BENCH_PG_ADMIN_URL (default: local Postgres on :5432).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
import uuid

import asyncpg
import uvloop

from tally.config import load_settings
from tally.db import create_pool
from tally.eventlog import (
    Checkpoint,
    Event,
    GroupCommitAppender,
    NewEvent,
    append_events,
    read_events,
)
from tally.eventlog.reader import checkpoint_of
from tally.migrations import apply_migrations

ADMIN_URL = os.environ.get(
    "TALLY_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


class BenchUsage(Event, frozen=True):
    """A usage-sized event for the benchmark (about the size of a real UsageRecorded)."""

    tenant_id: uuid.UUID
    request_id: str
    model: str
    input_tokens: int
    output_tokens: int
    charge_nano: int


def make_event(tenant: uuid.UUID, i: int) -> BenchUsage:
    return BenchUsage(
        tenant_id=tenant,
        request_id=f"req-{i}",
        model="gpt-4o-mini",
        input_tokens=1200 + i % 100,
        output_tokens=300,
        charge_nano=123_456 + i,
    )


async def bench_single(pool: asyncpg.Pool, concurrency: int, seconds: float) -> float:
    """Each append in its own transaction: what a naive writer does."""
    tenant, counter, stop = uuid.uuid4(), iter(range(10**12)), time.perf_counter() + seconds

    async def worker() -> int:
        done = 0
        while time.perf_counter() < stop:
            i = next(counter)
            async with pool.acquire() as conn, conn.transaction():
                await append_events(conn, [NewEvent(make_event(tenant, i), f"s-{tenant}-{i}")])
            done += 1
        return done

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
    return total / (time.perf_counter() - started)


async def bench_group(pool: asyncpg.Pool, concurrency: int, seconds: float) -> tuple[float, float]:
    """Group commit: each caller resumes only once its batch committed (durable on return)."""
    sizes: list[int] = []
    appender = GroupCommitAppender(pool, on_batch=lambda n, _s: sizes.append(n))
    tenant, counter, stop = uuid.uuid4(), iter(range(10**12)), time.perf_counter() + seconds

    async def worker() -> int:
        done = 0
        while time.perf_counter() < stop:
            i = next(counter)
            await appender.append(make_event(tenant, i), f"g-{tenant}-{i}")
            done += 1
        return done

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(worker() for _ in range(concurrency))))
    elapsed = time.perf_counter() - started
    await appender.close()
    return total / elapsed, (sum(sizes) / len(sizes) if sizes else 0.0)


async def bench_read(pool: asyncpg.Pool) -> tuple[float, int]:
    async with pool.acquire() as conn:
        checkpoint, total, started = Checkpoint(), 0, time.perf_counter()
        while batch := await read_events(conn, checkpoint, limit=5000):
            total += len(batch)
            checkpoint = checkpoint_of(batch[-1])
        return total / (time.perf_counter() - started), total


async def main(seconds: float) -> None:
    name = f"tally_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        await apply_migrations(url)
        settings = load_settings({"TALLY_DATABASE_URL": url})
        pool = await create_pool(settings, min_size=4, max_size=32)
        server = await pool.fetchval("SHOW server_version")
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, Postgres {server}"
        )
        print(f"{seconds:g} s per case; events/s (mean batch size for group commit)\n")
        print(f"{'appenders':>10} {'1 per transaction':>19} {'group commit':>14} {'batch':>7}")
        for concurrency in (1, 16, 256):
            single = await bench_single(pool, concurrency, seconds)
            group, batch = await bench_group(pool, concurrency, seconds)
            print(f"{concurrency:>10} {single:>19,.0f} {group:>14,.0f} {batch:>7.1f}")
        rate, total = await bench_read(pool)
        print(f"\nread (gap-safe, batches of 5000): {rate:,.0f} events/s over {total:,} events")
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print("\nrerun: make bench-eventlog   (or .venv/bin/python -m bench.eventlog.run --seconds N)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    # The services run on uvloop, so the benchmark does too.
    uvloop.run(main(parser.parse_args().seconds))
