"""Provider-call client benchmark: CPU per call of aiohttp's client and of gateway.http_client.

Starts the fake OpenAI upstream in its own process, then, in this process on uvloop, sends
`--calls` chat completions through each client, `--concurrency` at a time over keep-alive
connections, and prints the process CPU time per call (the fake's CPU is not counted) and the
calls per second. The request is the one the gateway forwards in `bench.gateway.run`.

Rerun: .venv/bin/python -m bench.gateway.client [--calls 6000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import msgspec
import uvloop

from bench.gateway.run import MESSAGES, MODEL, start, stop, wait_http
from gateway.http_client import HttpClient
from tests.fixtures.gateway import free_port

BODY = msgspec.json.encode(
    {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": 64,
        "stream_options": {"include_usage": True},
    }
)
HEADERS = {"authorization": "Bearer sk-fake", "content-type": "application/json"}


async def measure(call: Callable[[], Awaitable[bytes]], calls: int, concurrency: int) -> str:
    for _ in range(200):  # connections opened, caches warm
        await call()
    each = calls // concurrency

    async def worker() -> None:
        for _ in range(each):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    done = each * concurrency
    return f"{cpu / done * 1e6:7.1f} µs CPU per call, {done / wall:8,.0f} calls/s"


async def with_aiohttp(url: str, calls: int, concurrency: int) -> str:
    # As the gateway configured it before gateway.http_client.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent",),
    ) as session:

        async def call() -> bytes:
            async with session.post(url, headers=HEADERS, data=BODY) as response:
                return await response.read()

        return await measure(call, calls, concurrency)


async def with_http_client(url: str, calls: int, concurrency: int) -> str:
    client = HttpClient(connect_timeout_s=5, read_timeout_s=30)

    async def call() -> bytes:
        response = await client.request("POST", url, HEADERS, BODY)
        try:
            return await response.read()
        finally:
            response.release()

    try:
        return await measure(call, calls, concurrency)
    finally:
        await client.close()


def main(calls: int, concurrency: int) -> None:
    port = free_port()
    fake = start(
        [sys.executable, "-m", "tests.fakes.openai_upstream", "--port", str(port)], dict(os.environ)
    )
    try:
        base = f"http://127.0.0.1:{port}/v1"
        wait_http(base + "/models")
        url = base + "/chat/completions"
        print(f"{calls:,} calls, {concurrency} at a time, against the fake OpenAI upstream")
        for name, run in (("aiohttp", with_aiohttp), ("gateway.http_client", with_http_client)):
            print(f"{name:<20} {uvloop.run(run(url, calls, concurrency))}", flush=True)
    finally:
        stop(fake)
    print("\nrerun: .venv/bin/python -m bench.gateway.client [--calls N] [--concurrency N]")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=6000)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    main(args.calls, args.concurrency)
