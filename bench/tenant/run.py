"""Tenant-service benchmark: how fast a revocation reaches a gateway's cache, and what a
password check costs.

1. Revocation latency: a subscriber on the invalidation channel stands in for a gateway. Each
   round revokes a key through the service (one unit of work: row, event, commit, publish) and
   measures from the start of the revocation to the moment the subscriber holds the message.
2. argon2id hash and verify at the production parameters (RFC 9106 low memory).

Rerun: make bench-tenant   (or: .venv/bin/python -m bench.tenant.run [--rounds 200])
Uses a throwaway database on TALLY_BENCH_PG_ADMIN_URL (default: local Postgres on :5432) and
Redis at TALLY_BENCH_REDIS_URL (default: redis://127.0.0.1:6379/1).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import aiohttp
import asyncpg
import redis.asyncio as redis

from tally.config import load_settings
from tally.db import create_pool
from tally.events.tenant import Actor
from tally.invalidation import CHANNEL, decode_invalidation
from tally.migrations import apply_migrations
from tenant.api_keys.schemas import ApiKeyCreate
from tenant.api_keys.service import api_key_service
from tenant.auth import passwords
from tenant.runtime import Runtime
from tenant.tenants.schemas import TenantCreate
from tenant.tenants.service import tenant_service

ADMIN_URL = os.environ.get(
    "TALLY_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TALLY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/1")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def bench_revocation(runtime: Runtime, rounds: int) -> list[float]:
    actor = Actor(kind="cli", id="bench")
    async with runtime.unit(actor) as uow:
        tenant = await tenant_service.create(uow, TenantCreate(name="bench"), runtime.settings)
    assert runtime.redis is not None
    pubsub = runtime.redis.pubsub()
    await pubsub.subscribe(CHANNEL)
    while await pubsub.get_message(timeout=1) is None:
        pass
    latencies = []
    for _ in range(rounds):
        async with runtime.unit(actor) as uow:
            key = await api_key_service.create(uow, tenant.id, ApiKeyCreate())
        started = time.perf_counter()
        async with runtime.unit(actor) as uow:
            await api_key_service.revoke(uow, tenant.id, key.id)
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5)
            if message and decode_invalidation(message["data"]).id == str(key.id):
                break
        latencies.append((time.perf_counter() - started) * 1000)
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    return latencies


async def bench_passwords(rounds: int) -> tuple[list[float], list[float]]:
    hashes, checks = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        hashed = await passwords.hash_password("a benchmark password")
        hashes.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        assert await passwords.verify_password(hashed, "a benchmark password")
        checks.append((time.perf_counter() - started) * 1000)
    return hashes, checks


async def main(rounds: int) -> None:
    name = f"tally_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        await apply_migrations(url)
        settings = load_settings(
            {"TALLY_DATABASE_URL": url, "TALLY_REDIS_URL": REDIS_URL, "TALLY_LOG_LEVEL": "warning"}
        )
        pool = await create_pool(settings)
        client = redis.from_url(REDIS_URL)  # type: ignore[no-untyped-call]
        async with aiohttp.ClientSession() as http:
            runtime = Runtime(settings, pool, client, http)
            revocations = await bench_revocation(runtime, rounds)
        await client.aclose()
        await pool.close()
        hashes, checks = await bench_passwords(max(3, rounds // 20))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(f"revocation -> invalidation received ({rounds} rounds), ms:")
    print(
        f"  p50 {statistics.median(revocations):.2f}  p99 {percentile(revocations, 99):.2f}"
        f"  max {max(revocations):.2f}"
    )
    print("argon2id (m=64 MiB, t=3, p=4), ms per operation:")
    print(f"  hash p50 {statistics.median(hashes):.0f}  verify p50 {statistics.median(checks):.0f}")
    print("rerun: .venv/bin/python -m bench.tenant.run --rounds", rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=200)
    asyncio.run(main(parser.parse_args().rounds))
