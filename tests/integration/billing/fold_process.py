"""The billing fold run as its own process, so a test can kill -9 it mid-batch.

It folds in small batches; on batch `hang_at` it stops after writing everything but before
the checkpoint commits, says "written" and hangs until killed.
"""

from __future__ import annotations

import asyncio
import sys
import time

import redis.asyncio as redis

from billing.fold.service import Folder
from tally.config import get_settings
from tally.db import create_pool
from tally.live_balance import LiveBalances


async def main(hang_at: int) -> None:
    settings = get_settings()
    pool = await create_pool(settings, min_size=1, max_size=2)
    client = redis.from_url(settings.redis_url)  # type: ignore[no-untyped-call]
    batches = 0

    def fault(where: str) -> None:
        nonlocal batches
        if where != "after_writes":
            return
        batches += 1
        if batches == hang_at:
            print("written", flush=True)
            time.sleep(3600)  # blocks the loop with the transaction open: as good as frozen

    folder = Folder(pool, shard_count=1, live=LiveBalances(client), batch_size=50, fault=fault)
    await folder.drain()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
