"""Run one `tally` command in this process and print its wall time and peak memory (RSS).

python -m bench.finance.measure statement export --all --period 2025-03 --format csv --out x
"""

from __future__ import annotations

import json
import resource
import sys
import time

from tally.cli import main

if __name__ == "__main__":
    started = time.perf_counter()
    code = main(sys.argv[1:])
    elapsed = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps({"exit": code, "seconds": round(elapsed, 3), "peak_rss_mib": peak_kib / 1024}),
        file=sys.stderr,
    )
    sys.exit(code)
