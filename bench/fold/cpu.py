"""Fold CPU per event: the worker's and its Postgres backends', by phase.

Wall-clock rates move with whatever else the machine runs; CPU per event moves far less. This
builds the fold benchmark's log (bench.fold.run), folds it once with one shard in this process
after a first batch (warm-up), and prints per event folded: the process's CPU, the CPU of its
Postgres backends (read from /proc, so Postgres must run on this host) and the wall time of each
phase of a batch (the next batch is read and folded while one is written: those phases overlap).

Rerun: .venv/bin/python -m bench.fold.cpu [--events N] [--batch-size N]
Uses a throwaway database on TALLY_BENCH_PG_ADMIN_URL and Redis TALLY_BENCH_REDIS_URL, as
bench.fold.run does.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.asyncio as redis
import uvloop

from bench.fold import run as fold_bench
from billing.fold import repository
from billing.fold import service as fold_service
from billing.fold.service import Folder
from tally.config import load_settings
from tally.db import create_pool
from tally.eventlog import reader
from tally.gc_tuning import tune_garbage_collector
from tally.live_balance import LiveBalances
from tally.migrations import apply_migrations

PHASES: Counter[str] = Counter()


def _timed(module: Any, name: str) -> None:
    original: Callable[..., Awaitable[Any]] = getattr(module, name)

    @functools.wraps(original)
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            PHASES[name] += time.perf_counter() - started

    setattr(module, name, timed)


def _backend_cpu_seconds(pids: list[int]) -> float:
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


async def _wait_until_readable(pool: asyncpg.Pool, timeout: float = 300.0) -> None:
    # The gap-safe reader stops below the oldest transaction on the whole (shared) server:
    # fold only once it may read the whole log, or the timed run would stop short.
    deadline = time.monotonic() + timeout
    async with pool.acquire() as conn:
        newest = await conn.fetchval("SELECT max(txid)::text::bigint FROM events")
        while time.monotonic() < deadline:
            horizon = await conn.fetchval(
                "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
            )
            if horizon > newest:
                return
            await asyncio.sleep(0.1)


async def main(events: int, tenants: int, batch_size: int) -> None:
    for name in ("load_states", "load_lots", "save_states", "add_ledger_lines", "add_rollups"):
        _timed(repository, name)
    _timed(reader, "read_events")
    # The batch read and folded ahead (while the one before it is written): its phases overlap
    # the others, so the wall times below add up to more than the run's.
    _timed(fold_service, "read_ahead")
    _timed(fold_service, "project_events")
    _timed(LiveBalances, "apply_folds")
    name = f"tally_bench_foldcpu_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(fold_bench.ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = fold_bench.ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        await apply_migrations(url)
        pool = await create_pool(load_settings({"TALLY_DATABASE_URL": url}), min_size=1, max_size=4)
        await fold_bench.build_log(pool, tenants=tenants, events=events)
        await _wait_until_readable(pool)
        tune_garbage_collector()
        client = redis.from_url(fold_bench.REDIS_URL)  # type: ignore[no-untyped-call]
        folder = Folder(pool, shard_count=1, live=LiveBalances(client), batch_size=batch_size)
        await folder.fold_shard(0, max_batches=1)
        # Every connection the fold may use is open before the backends' CPU is read.
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        for conn in held:
            await pool.release(conn)
        async with pool.acquire() as conn:
            pids = [
                r[0]
                for r in await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                )
            ]
        PHASES.clear()
        backend_before = _backend_cpu_seconds(pids)
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        run = await folder.fold_shard(0)
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        backend = _backend_cpu_seconds(pids) - backend_before
        n = run.events
        if not n:
            raise SystemExit("nothing folded: the log was not readable in time")
        print(f"{n:,} events folded, batches of {batch_size:,}: {n / wall:,.0f} events/s (wall)")
        print(f"  worker CPU   {cpu / n * 1e6:5.1f} µs/event")
        print(f"  Postgres CPU {backend / n * 1e6:5.1f} µs/event (its backends)")
        print("  wall time per event by phase (read_ahead, project_events overlap the rest):")
        for phase, seconds in PHASES.most_common():
            print(f"    {phase:18s} {seconds / n * 1e6:5.1f} µs")
        await client.aclose()
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print("\nrerun: .venv/bin/python -m bench.fold.cpu --events N --batch-size N")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=25_000)
    options = parser.parse_args()
    uvloop.run(main(options.events, options.tenants, options.batch_size))
