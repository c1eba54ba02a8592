"""Gateway benchmark: the full paid path (auth, rate limits, hold, forward, settle, durable usage
event) against the fake OpenAI upstream on loopback, driven by wrk.

For plain and streamed chat completions at 1, 32 and 256 connections it reports requests/s,
latency p50/p99 through the gateway and straight to the fake (the difference is what the
gateway adds), and the CPU time per request (utime + stime from /proc/<pid>/stat around each
run) of the gateway and of the worker (`tally worker`) folding the usage events it writes;
the worker's is read once it has folded the run's tail. Then it drives `--soak` requests and
reports the gateway's memory (RSS) after warm-up and at the end.

`--processes N` runs N gateway processes on one port instead of one (uvicorn's own
multi-process mode: the processes share the listening socket and the kernel hands each new
connection to one of them, as a Service spreads connections over pods); CPU and memory are then
summed over every process. `--processes 1` (the default) is `tally serve gateway` itself.

Rerun: make bench-gateway   (or: .venv/bin/python -m bench.gateway.run [--seconds 10]
        [--soak 1000000] [--processes 2])
Needs wrk (`apt-get install -y wrk`). Uses a throwaway database on TALLY_BENCH_PG_ADMIN_URL
(default: local Postgres on :5432) and the Redis database TALLY_BENCH_REDIS_URL (default
redis://127.0.0.1:6379/3), which it flushes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import msgspec
import psutil
import redis.asyncio as redis

from tally.migrations import apply_migrations
from tests.fixtures.gateway import (
    TEST_SECRET_KEY,
    create_credential,
    create_key,
    create_model,
    create_route,
    create_tenant,
    free_port,
    set_price,
)

ADMIN_URL = os.environ.get(
    "TALLY_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TALLY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/3")
MODEL = "bench-model"
MESSAGES = [{"role": "user", "content": "Write one short sentence about lighthouses."}]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants: uvicorn's supervisor and its worker processes."""
    process = psutil.Process(pid)
    return [pid, *(child.pid for child in process.children(recursive=True))]


def cpu_seconds(pid: int) -> float:
    total = 0.0
    for member in _tree(pid):
        fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def rss_mib(pid: int) -> float:
    return sum(
        int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE / 2**20
        for member in _tree(pid)
    )


def lua_script(body: bytes, key: str) -> str:
    escaped = body.decode().replace("\\", "\\\\").replace('"', '\\"')
    return (
        'wrk.method = "POST"\n'
        f'wrk.body = "{escaped}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    )


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


class WrkResult(msgspec.Struct):
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def wrk(url: str, script: str, connections: int, seconds: float) -> WrkResult:
    threads = min(connections, 2)
    out = subprocess.run(
        [
            "wrk",
            "--latency",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            script,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(match.group(1))
    if match := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    ):
        errors += sum(int(g) for g in match.groups())
    return WrkResult(requests, rps, p50, p99, errors)


async def seed(url: str, fake_url: str) -> str:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    assert pool is not None
    try:
        tenant = await create_tenant(pool, balance_nano=10**18)
        _, key = await create_key(pool, tenant)
        credential = await create_credential(pool, kind="openai", base_url=fake_url)
        await create_model(pool, MODEL)
        await create_route(pool, MODEL, credential)
        await set_price(pool, MODEL, input_per_mtok="0.15", output_per_mtok="0.6")
    finally:
        await pool.close()
    return key


def start(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=sys.stderr, start_new_session=True
    )


def wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def gateway_command(python: str, processes: int, port: int) -> list[str]:
    if processes == 1:
        return [python, "-m", "tally.cli", "serve", "gateway"]
    # The options of `tally serve` (tally/cli.py), plus the worker count.
    return [
        python, "-m", "uvicorn", "gateway.app:create_app", "--factory",
        "--workers", str(processes), "--host", "127.0.0.1", "--port", str(port),
        "--loop", "uvloop", "--http", "gateway.http_server:GatewayHttpProtocol",
        "--lifespan", "on", "--no-access-log",
        "--log-level", "warning", "--timeout-graceful-shutdown", "30", "--no-server-header",
        "--no-proxy-headers",
    ]  # fmt: skip


def main(seconds: float, soak: int, connections: list[int], processes: int = 1) -> None:
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed: apt-get install -y wrk")
    name = f"tally_bench_{uuid.uuid4().hex[:8]}"

    async def create_db() -> str:
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f'CREATE DATABASE "{name}"')
        server = await admin.fetchval("SHOW server_version")
        await admin.close()
        url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
        await apply_migrations(url)
        client = redis.from_url(REDIS_URL)
        await client.flushdb()
        await client.aclose()
        return f"{url}|{server}"

    db_url, pg_version = asyncio.run(create_db()).split("|")
    fake_port, gateway_port = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        TALLY_DATABASE_URL=db_url,
        TALLY_REDIS_URL=REDIS_URL,
        TALLY_SECRET_KEY=TEST_SECRET_KEY,
        TALLY_ENV="production",
        TALLY_LOG_LEVEL="warning",
        TALLY_GATEWAY_PORT=str(gateway_port),
        TALLY_DB_POOL_MAX="20",
    )
    python = sys.executable
    fake = start(
        [python, "-m", "tests.fakes.openai_upstream", "--port", str(fake_port), "--chunks", "16"],
        env,
    )
    gateway: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    try:
        fake_url = f"http://127.0.0.1:{fake_port}/v1"
        wait_http(fake_url + "/models")
        key = asyncio.run(seed(db_url, fake_url))
        gateway = start(gateway_command(python, processes, gateway_port), env)
        worker = start([python, "-m", "tally.cli", "worker"], env)
        gateway_url = f"http://127.0.0.1:{gateway_port}"
        wait_http(gateway_url + "/healthz")
        if processes > 1:
            # Every worker must be serving before the warm-up, not just the first one up.
            deadline = time.monotonic() + 30
            while len(_tree(gateway.pid)) < processes + 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(2)
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, Postgres {pg_version}; wrk; fake upstream: 16 chunks,"
            f" no added latency; {seconds:g} s per case; {processes} gateway process(es); "
            f"load average at start {os.getloadavg()[0]:.2f}\n"
        )
        bodies = {
            "plain": {"model": MODEL, "messages": MESSAGES, "max_tokens": 64},
            "stream": {
                "model": MODEL,
                "messages": MESSAGES,
                "max_tokens": 64,
                "stream": True,
                "stream_options": {"include_usage": True},
            },
        }
        scripts = {}
        for kind, body in bodies.items():
            for target in ("gateway", "direct"):
                path = tmp / f"{kind}-{target}.lua"
                path.write_text(
                    lua_script(msgspec.json.encode(body), key if target == "gateway" else "sk-fake")
                )
                scripts[kind, target] = str(path)
        # Warm-up: connections, caches, the live balance, JIT-free but allocator-warm.
        warm = wrk(gateway_url + "/v1/chat/completions", scripts["plain", "gateway"], 32, 3)
        completed = warm.requests - warm.errors
        time.sleep(2)  # the worker folds the warm-up's events
        print(
            f"{'case':<8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'direct p50':>10} {'direct p99':>10} {'added p50':>9} {'added p99':>9} "
            f"{'CPU ms/req: gateway':>19} {'worker':>6} {'total':>6} {'errors':>6}"
        )
        for kind in ("plain", "stream"):
            for conns in connections:
                direct = wrk(
                    fake_url + "/chat/completions", scripts[kind, "direct"], conns, seconds
                )
                before = cpu_seconds(gateway.pid)
                worker_before = cpu_seconds(worker.pid)
                through = wrk(
                    gateway_url + "/v1/chat/completions", scripts[kind, "gateway"], conns, seconds
                )
                per_request = 1000 / max(through.requests, 1)
                cpu = (cpu_seconds(gateway.pid) - before) * per_request
                time.sleep(1.5)  # the fold's last pass over this run's events
                worker_cpu = (cpu_seconds(worker.pid) - worker_before) * per_request
                completed += through.requests - through.errors
                print(
                    f"{kind:<8} {conns:>5} {through.rps:>9,.0f} {through.p50_ms:>8.2f} "
                    f"{through.p99_ms:>8.2f} {direct.p50_ms:>10.2f} {direct.p99_ms:>10.2f} "
                    f"{through.p50_ms - direct.p50_ms:>9.2f} "
                    f"{through.p99_ms - direct.p99_ms:>9.2f} "
                    f"{cpu:>19.3f} {worker_cpu:>6.3f} {cpu + worker_cpu:>6.3f} "
                    f"{through.errors:>6}",
                    flush=True,
                )
        if soak:
            print(f"\nmemory: driving {soak:,} plain requests at 32 connections", flush=True)
            start_rss = rss_mib(gateway.pid)
            done = 0
            samples = []
            while done < soak:
                result = wrk(
                    gateway_url + "/v1/chat/completions", scripts["plain", "gateway"], 32, 20
                )
                done += result.requests
                completed += result.requests - result.errors
                samples.append((done, rss_mib(gateway.pid)))
                print(f"  after {done:>9,} requests: RSS {samples[-1][1]:.1f} MiB", flush=True)
            print(
                f"RSS after warm-up {start_rss:.1f} MiB, "
                f"after {done:,} requests {samples[-1][1]:.1f} MiB"
            )
        recorded = asyncio.run(count_events(db_url))
        # wrk counts a response once it is complete; each must have its usage event (more
        # events are fine: requests cut off when a wrk run ends still finish server-side).
        print(f"usage events recorded: {recorded:,} for {completed:,} completed responses")
        if recorded < completed:
            sys.exit("FAILED: fewer usage events than completed responses")
    finally:
        if gateway is not None:
            stop(gateway)
        if worker is not None:
            stop(worker)
        stop(fake)
        shutil.rmtree(tmp, ignore_errors=True)

        async def drop() -> None:
            admin = await asyncpg.connect(ADMIN_URL)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()

        asyncio.run(drop())
    print(
        "\nrerun: make bench-gateway"
        "   (or .venv/bin/python -m bench.gateway.run --seconds N --soak N --processes N)"
    )


async def count_events(url: str) -> int:
    conn = await asyncpg.connect(url)
    count: int = await conn.fetchval("SELECT count(*) FROM events WHERE type = 'UsageRecorded'")
    await conn.close()
    return count


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--soak", type=int, default=0, help="requests for the memory check")
    parser.add_argument("--connections", default="1,32,256")
    parser.add_argument(
        "--processes", type=int, default=1, help="gateway processes sharing the port"
    )
    args = parser.parse_args()
    main(args.seconds, args.soak, [int(c) for c in args.connections.split(",")], args.processes)
