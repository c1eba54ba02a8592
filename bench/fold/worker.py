"""One fold worker process of the benchmark: folds its shard(s) until caught up (or until
`--max-events`), then prints one JSON line: events, seconds, peak RSS.

Run by bench.fold.run; not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import redis.asyncio as redis
import uvloop

from billing.fold.service import DEFAULT_BATCH, Folder
from tally.config import load_settings
from tally.db import create_pool
from tally.gc_tuning import tune_garbage_collector
from tally.live_balance import LiveBalances


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory (VmHWM), in MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def main(args: argparse.Namespace) -> None:
    tune_garbage_collector()  # as the worker does at start-up
    settings = load_settings({"TALLY_DATABASE_URL": args.database_url})
    pool = await create_pool(settings, min_size=1, max_size=4)
    client = redis.from_url(args.redis_url)  # type: ignore[no-untyped-call]
    folder = Folder(
        pool, shard_count=args.shards, live=LiveBalances(client), batch_size=args.batch_size
    )
    started = time.perf_counter()
    events = 0
    indexes = [args.index] if args.index is not None else list(range(args.shards))

    # As the worker's job does: one fold_shard call until caught up, so each batch is read
    # and folded while the one before it is written (--max-events: whole batches only).
    max_batches = None if args.max_events is None else -(-args.max_events // args.batch_size)

    async def fold(index: int) -> None:
        nonlocal events
        run = await folder.fold_shard(index, max_batches=max_batches)
        events += run.events

    # All shards at once, as one `tally worker` runs the jobs of every shard concurrently:
    # one shard's Python work overlaps another's wait for Postgres.
    await asyncio.gather(*(fold(index) for index in indexes))
    seconds = time.perf_counter() - started
    await client.aclose()
    await pool.close()
    print(json.dumps({"events": events, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--index", type=int)
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--max-events", type=int)
    uvloop.run(main(parser.parse_args()))
