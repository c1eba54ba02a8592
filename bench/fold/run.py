"""Fold benchmark: fold throughput with one and two workers, replay of the whole log, and the
peak memory of each process.

The log: 1,000 tenants (TenantCreated + a grant each) and 1,000,000 usage events spread over
them at random (every batch touches hundreds of tenants), priced by the real pricing code at
the current price-book version, over 3 models, 2 keys per tenant and 24 hours of rollups.

    1. one worker folds the first 100,000 events (peak memory of a short run), then
    2. one worker folds the rest (throughput; peak memory of a long run);
    3. projections reset, two workers (TALLY_FOLD_SHARDS=2) fold everything in parallel;
    4. `tally replay --verify` rebuilds every projection from the log and compares.

Each worker is its own process (as in production) and reports its peak RSS (VmHWM).

Rerun: make bench-fold   (or: .venv/bin/python -m bench.fold.run [--events N] [--tenants N])
Uses a throwaway database on TALLY_BENCH_PG_ADMIN_URL (default: local Postgres on :5432) and
Redis TALLY_BENCH_REDIS_URL (default redis://127.0.0.1:6379/2).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import redis.asyncio as redis
import uvloop

from billing.prices.schemas import PriceIn
from billing.prices.service import price_service
from tally.config import load_settings
from tally.db import create_pool
from tally.eventlog import encode_event
from tally.events.billing import CreditsGranted, UsageRecorded
from tally.events.tenant import Actor, TenantCreated
from tally.live_balance import LiveBalances
from tally.migrations import apply_migrations
from tally.pricebook import current_price_version, effective_price
from tally.pricing import TokenUsage, price_usage

ADMIN_URL = os.environ.get(
    "TALLY_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TALLY_BENCH_REDIS_URL", "redis://127.0.0.1:6379/2")
ROOT = Path(__file__).resolve().parents[2]
ACTOR = Actor(kind="system", id="bench")
MODELS = {
    "gpt-4o-mini": ("0.15", "0.60"),
    "claude-sonnet": ("3", "15"),
    "gemini-flash": ("0.3", "2.5"),
}
CHUNK = 50_000
PROJECTIONS = (
    "balances",
    "credit_lots",
    "ledger_entries",
    "usage_rollups",
    "credit_consumption_daily",
    "pricing_mismatches",
    "consumer_checkpoints",
    "fold_layout",
    "notifications",
)


async def _copy_events(
    conn: asyncpg.Connection, rows: list[tuple[str, int, uuid.UUID, str, str]]
) -> None:
    async with conn.transaction():
        await conn.copy_records_to_table(
            "events",
            records=rows,
            columns=("type", "schema_version", "tenant_id", "idempotency_key", "data"),
        )


async def build_log(pool: asyncpg.Pool, *, tenants: int, events: int) -> float:
    """Tenants, grants and usage events; returns the seconds it took."""
    started = time.perf_counter()
    async with pool.acquire() as conn:
        for model, (price_in, price_out) in MODELS.items():
            await price_service.set_price(
                conn,
                None,
                PriceIn(
                    model=model,
                    input_per_mtok=Decimal(price_in),
                    output_per_mtok=Decimal(price_out),
                    margin_pct=Decimal(20),
                    effective_at=datetime(2020, 1, 1, tzinfo=UTC),
                ),
                ACTOR,
            )
        version = await current_price_version(conn)
        tenant_ids = [uuid.uuid4() for _ in range(tenants)]
        keys = {t: (uuid.uuid4(), uuid.uuid4()) for t in tenant_ids}
        await conn.copy_records_to_table(
            "tenants",
            records=[(t, f"bench-{i}", "prepaid") for i, t in enumerate(tenant_ids)],
            columns=("id", "name", "mode"),
        )
        setup = []
        for t in tenant_ids:
            setup.append(
                (
                    "TenantCreated",
                    1,
                    t,
                    f"tenant:{t}",
                    encode_event(
                        TenantCreated(tenant_id=t, name=str(t), mode="prepaid", actor=ACTOR)
                    ).decode(),
                )
            )
            grant = CreditsGranted(
                tenant_id=t,
                grant_id=uuid.uuid4(),
                amount_nano=10**12,
                kind="starter",
                reason="bench",
                actor=ACTOR,
            )
            setup.append(
                ("CreditsGranted", 1, t, f"grant:{grant.grant_id}", encode_event(grant).decode())
            )
        await _copy_events(conn, setup)
        prices = {
            model: await effective_price(
                conn, tenant_id=None, model=model, version=version, at=datetime.now(UTC)
            )
            for model in MODELS
        }
    rng = random.Random(42)
    charges: dict[tuple[str, int, int], tuple[int, int]] = {}
    day = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=1)
    rows: list[tuple[str, int, uuid.UUID, str, str]] = []
    for i in range(events):
        tenant = tenant_ids[rng.randrange(tenants)]
        model = rng.choice(list(MODELS))
        tokens_in, tokens_out = rng.randrange(50, 4000, 50), rng.randrange(10, 1500, 10)
        key = (model, tokens_in, tokens_out)
        usage = TokenUsage(input_tokens=tokens_in, output_tokens=tokens_out)
        if key not in charges:
            price = prices[model]
            assert price is not None
            charge = price_usage(
                usage,
                price.price,
                margin_pct=price.margin_pct,
                credit_price_usd=price.credit_price_usd,
            )
            charges[key] = (charge.charge_nano, charge.base_nano)
        charge_nano, base_nano = charges[key]
        request_id = f"req-{i:08d}"
        event = UsageRecorded(
            request_id=request_id,
            tenant_id=tenant,
            key_id=keys[tenant][i % 2],
            model=model,
            endpoint="/v1/chat/completions",
            usage=usage,
            price_version=version,
            charge_nano=charge_nano,
            base_nano=base_nano,
            status="ok",
            latency_ms=350,
            # The log is in time order: usage is appended as it happens, over one day.
            occurred_at=day + timedelta(microseconds=i * 86_400_000_000 // events),
        )
        rows.append(
            ("UsageRecorded", 1, tenant, f"usage:{request_id}", encode_event(event).decode())
        )
        if len(rows) == CHUNK:
            async with pool.acquire() as conn:
                await _copy_events(conn, rows)
            rows = []
    if rows:
        async with pool.acquire() as conn:
            await _copy_events(conn, rows)
    async with pool.acquire() as conn:
        await conn.execute("ANALYZE events")
    client = redis.from_url(REDIS_URL)  # type: ignore[no-untyped-call]
    live = LiveBalances(client)
    for t in tenant_ids:  # the gateway would have loaded them
        await live.forget(t)
        await live.load(t, seq=0, balance_nano=0, unfolded={})
    await client.aclose()
    return time.perf_counter() - started


def run_workers(
    url: str, *, shards: int, processes: int, max_events: int | None = None
) -> list[dict[str, float]]:
    """Start `processes` worker processes (one per shard, or one for all shards), collect."""
    commands = []
    for index in range(processes):
        command = [
            sys.executable,
            "-m",
            "bench.fold.worker",
            "--database-url",
            url,
            "--redis-url",
            REDIS_URL,
            "--shards",
            str(shards),
        ]
        if processes > 1:
            command += ["--index", str(index)]
        if max_events is not None:
            command += ["--max-events", str(max_events)]
        commands.append(command)
    processes = [
        subprocess.Popen(
            c,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for c in commands
    ]
    reports = []
    for process in processes:
        out, _ = process.communicate()
        if process.returncode:
            raise RuntimeError(f"worker failed: {out}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


async def reset_projections(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"TRUNCATE {', '.join(PROJECTIONS)}")
    finally:
        await conn.close()


def run_replay(url: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.fold.replay_worker", "--database-url", url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


async def main(events: int, tenants: int) -> None:
    name = f"tally_bench_fold_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        await apply_migrations(url)
        settings = load_settings({"TALLY_DATABASE_URL": url})
        pool = await create_pool(settings, min_size=2, max_size=8)
        server = await pool.fetchval("SHOW server_version")
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, Postgres {server}"
        )
        built = await build_log(pool, tenants=tenants, events=events)
        await pool.close()
        total = events + 2 * tenants + len(MODELS)
        print(f"log: {events:,} usage events over {tenants:,} tenants ({total:,} events)")
        print(f"built in {built:.1f} s\n")

        warm = min(100_000, events // 10)
        short = run_workers(url, shards=1, processes=1, max_events=warm)[0]
        long = run_workers(url, shards=1, processes=1)[0]
        print("one worker (one process, TALLY_FOLD_SHARDS=1):")
        for label, part in (("first", short), ("next", long)):
            print(
                f"  {label} {part['events']:,.0f} events:"
                f" {part['events'] / part['seconds']:,.0f} events/s,"
                f" peak RSS {part['peak_rss_mb']:.0f} MB"
            )

        await reset_projections(url)
        [both] = run_workers(url, shards=2, processes=1)
        print("one worker, two shards (one process folding both shards concurrently):")
        print(
            f"  {both['events']:,.0f} events: {both['events'] / both['seconds']:,.0f} events/s,"
            f" peak RSS {both['peak_rss_mb']:.0f} MB"
        )

        await reset_projections(url)
        started = time.perf_counter()
        two = run_workers(url, shards=2, processes=2)
        wall = time.perf_counter() - started
        folded = sum(r["events"] for r in two)
        print("two workers (two processes, TALLY_FOLD_SHARDS=2):")
        print(
            f"  {folded:,.0f} events in {wall:.1f} s: {folded / wall:,.0f} events/s"
            f" (including process start-up); per worker "
            + ", ".join(f"{r['events'] / r['seconds']:,.0f}/s" for r in two)
            + f"; peak RSS {max(r['peak_rss_mb'] for r in two):.0f} MB"
        )

        replay = run_replay(url)
        report = replay["report"]
        assert isinstance(report, dict)
        print("replay (`tally replay --verify`: rebuild every projection from the log, compare):")
        print(
            f"  {report['events_replayed']:,} events in {replay['seconds']:.1f} s"
            f" (rebuild {report['rebuild_seconds']:.1f} s,"
            f" compare {report['compare_seconds']:.1f} s),"
            f" identical: {report['ok']}, {report['workers']} partition processes;"
            f" peak RSS {replay['peak_rss_mb']:.0f} MB (coordinator),"
            f" {replay['children_peak_rss_mb']:.0f} MB (largest partition process)"
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(
        "\nrerun: make bench-fold   (or .venv/bin/python -m bench.fold.run --events N --tenants N)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=1_000)
    options = parser.parse_args()
    uvloop.run(main(options.events, options.tenants))
