"""`tally replay --verify`'s work in its own process, printing seconds and peak RSS."""

from __future__ import annotations

import argparse
import json
import resource
import time

import msgspec
import uvloop

from bench.fold.worker import peak_rss_mb
from billing.fold.replay import replay_verify


async def main(database_url: str) -> None:
    started = time.perf_counter()
    report = await replay_verify(database_url)
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - started,
                "peak_rss_mb": peak_rss_mb(),
                # The partition processes replay does its work in (the largest of them).
                "children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                / 1024,
                "report": msgspec.to_builtins(report),
            }
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    uvloop.run(main(parser.parse_args().database_url))
