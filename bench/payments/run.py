"""Payments benchmark: checkout creation, webhook intake and event processing.

Rerun: make bench-payments   (or: .venv/bin/python -m bench.payments.run [--purchases N]
[--concurrency C] [--workers W])
Uses a throwaway database on TALLY_BENCH_PG_ADMIN_URL (default: local Postgres on :5432) and
Redis at TALLY_BENCH_REDIS_URL (default redis://127.0.0.1:6379/5, flushed).

What it measures, all in one process and one event loop (the billing app under uvicorn, the
fake Stripe and the load generator share one core, so the figures are a floor):
- checkout: POST /billing/tenants/{id}/checkout-sessions, each a first purchase (two Stripe
  calls: the customer, then the session);
- intake: POST /webhooks/stripe with each event delivered twice at once (verify the signature,
  store once, queue), the "answer 2xx fast" path;
- processing: the stored events run through the job function by W concurrent workers, then
  a check that each purchase was credited exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from typing import Any

import asyncpg
import httpx
import redis.asyncio as redis
import uvicorn

from billing.app import create_app
from billing.payments.fulfilment import StripeEventProcessor
from billing.payments.runtime import PaymentsRuntime
from tally.auth import Principal, SigningKeys, issue_access_token, new_signing_key_entry
from tally.config import get_settings
from tally.db import create_pool
from tally.migrations import apply_migrations
from tests.fakes.stripe_api import FakeStripe, WebhookSender

ADMIN_URL = os.environ.get(
    "TALLY_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TALLY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/5")
SECRET = "whsec_bench"


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(pick(0.99) * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call
    return time.perf_counter() - started, result


async def bounded(concurrency: int, calls: list[Any]) -> list[tuple[float, Any]]:
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Any) -> tuple[float, Any]:
        async with gate:
            return await timed(call)

    return await asyncio.gather(*(one(c) for c in calls))


async def main(purchases: int, concurrency: int, workers: int) -> dict[str, Any]:
    name = f"tally_bench_payments_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base, _, query = ADMIN_URL.partition("?")
    database_url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    fake = FakeStripe()
    await fake.start()
    jwt_key = new_signing_key_entry("bench")
    os.environ.update(
        {
            "TALLY_DATABASE_URL": database_url,
            "TALLY_REDIS_URL": REDIS_URL,
            "TALLY_STRIPE_API_KEY": fake.api_key,
            "TALLY_STRIPE_API_BASE": fake.base_url,
            "TALLY_STRIPE_WEBHOOK_SECRET": SECRET,
            "TALLY_JWT_KEYS": jwt_key,
            "TALLY_LOG_LEVEL": "warning",
            "TALLY_DB_POOL_MAX": "20",
        }
    )
    get_settings.cache_clear()
    settings = get_settings()
    server: uvicorn.Server | None = None
    try:
        await apply_migrations(database_url)
        redis_client = redis.from_url(REDIS_URL)  # type: ignore[no-untyped-call]
        await redis_client.flushdb()
        pool = await create_pool(settings, min_size=2, max_size=20)
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=0, log_config=None, access_log=False
        )
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        serving = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no started event
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        tenants = [uuid.uuid4() for _ in range(purchases)]
        await pool.executemany(
            "INSERT INTO tenants (id, name, mode) VALUES ($1, $2, 'prepaid')",
            [(t, f"bench-{t.hex[:12]}") for t in tenants],
        )
        keys = SigningKeys.parse(jwt_key)
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=60, limits=limits
        ) as client:

            def checkout(tenant: uuid.UUID) -> Any:
                principal = Principal(uuid.uuid4(), "b@example.com", tenants={tenant: "admin"})
                token = issue_access_token(keys, settings, principal)
                return client.post(
                    f"/billing/tenants/{tenant}/checkout-sessions",
                    json={"credits": 10},
                    headers={"Authorization": f"Bearer {token}"},
                )

            started = time.perf_counter()
            created = await bounded(concurrency, [checkout(t) for t in tenants])
            checkout_seconds = time.perf_counter() - started
            assert all(r.status_code == 201 for _, r in created)

            events = [
                event
                for _, response in created
                for event in fake.complete_checkout(response.json()["session_id"])
            ]
            sender = WebhookSender([SECRET])
            deliveries = [sender.deliver(client, e) for e in events for _ in range(2)]
            started = time.perf_counter()
            delivered = await bounded(concurrency, deliveries)
            intake_seconds = time.perf_counter() - started
            assert all(r.status_code == 200 for _, r in delivered)

        runtime = PaymentsRuntime(pool=pool, settings=settings, redis=redis_client)
        processor = StripeEventProcessor(runtime)
        queue: asyncio.Queue[str] = asyncio.Queue()
        for event in events:
            queue.put_nowait(event["id"])

        async def worker() -> None:
            while not queue.empty():
                await processor.process(queue.get_nowait())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(workers)))
        processing_seconds = time.perf_counter() - started
        credited = await pool.fetchval(
            "SELECT count(*) FROM events WHERE type = 'CreditsPurchased'"
        )
        stored = await pool.fetchval("SELECT count(*) FROM stripe_webhook_events")
        await runtime.close()
        await pool.close()
        await redis_client.aclose()
        server.should_exit = True
        await serving
        return {
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus,"
            f" python {platform.python_version()}",
            "purchases": purchases,
            "concurrency": concurrency,
            "checkout_sessions_per_s": round(purchases / checkout_seconds, 1),
            "checkout_latency": percentiles([t for t, _ in created]),
            "webhook_deliveries": len(delivered),
            "webhook_deliveries_per_s": round(len(delivered) / intake_seconds, 1),
            "webhook_latency": percentiles([t for t, _ in delivered]),
            "events_stored": stored,
            "events_processed_per_s": round(len(events) / processing_seconds, 1),
            "processing_workers": workers,
            "credits_purchased_events": credited,
            "exactly_once": credited == purchases and stored == len(events),
        }
    finally:
        await fake.stop()
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=20)
    args = parser.parse_args()
    figures = asyncio.run(main(args.purchases, args.concurrency, args.workers))
    print(json.dumps(figures, indent=2))
