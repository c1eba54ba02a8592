"""Finance benchmark: a tenant-month of 1,000,000 requests as a statement, and the all-tenant CSV
of 10,000 tenants (time and peak memory), plus the month-end close that precedes it.

Rerun: make bench-finance   (or: .venv/bin/python -m bench.finance.run [--requests N]
[--tenants N] [--per-tenant N])
Uses a throwaway database on TALLY_BENCH_PG_ADMIN_URL (default: local Postgres on :5432).

Finance reads the billing fold's projections, so the harness measures that path: it writes
the log (usage priced by the real pricing code at a real price-book version, so the fold finds
no mismatch), folds it with billing's own fold (`Folder.drain`, timed apart: the workers do that
work continuously in production, not when finance asks), and then times the statements,
exports and close. The reconciliation's log reference (usage parsed from every event) is timed
too, as the cost of the old path and of the check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg

from billing.finance.config import finance_config
from billing.finance.documents.csv_export import stream_statements_csv
from billing.finance.documents.pdf import render_statement_pdf
from billing.finance.period import Period
from billing.finance.repository import log_usage_by_model, tenant_by_id
from billing.finance.service import finance_service
from billing.fold.service import Folder
from billing.prices.schemas import PriceIn
from billing.prices.service import price_service
from tally.config import load_settings
from tally.db import create_pool
from tally.events.tenant import Actor
from tally.migrations import apply_migrations
from tally.pricebook import current_price_version, effective_price
from tally.pricing import TokenUsage, price_usage

ADMIN_URL = os.environ.get(
    "TALLY_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PERIOD = Period(2025, 3)
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "gemini-pro", "deepseek-chat"]
# USD per million tokens: input, cached input, output.
PRICES = {
    "gpt-4o": ("2.5", "1.25", "10"),
    "gpt-4o-mini": ("0.15", "0.075", "0.6"),
    "claude-sonnet": ("3", "0.3", "15"),
    "gemini-pro": ("1.25", "0.31", "5"),
    "deepseek-chat": ("0.27", "0.07", "1.1"),
}
ACTOR = Actor(kind="system", id="bench")
# Request g's model and token counts depend on g mod 3000 only (see _GENERATE_USAGE), so 3,000
# charges priced in Python cover every generated event.
SHAPES = 3000

# One month of usage for one tenant, generated inside Postgres: the same JSON a UsageRecorded
# event holds, spread evenly over March 2025 (UTC), 10 API keys, 5 models, each charge the one
# the pricing code gives ($7, $8: charge and base by g mod 3000; $9: the price version).
_GENERATE_USAGE = """
INSERT INTO events (type, schema_version, tenant_id, idempotency_key, data, recorded_at)
SELECT 'UsageRecorded', 1, $1::uuid, 'bench-' || $1::text || '-' || g,
       json_build_object(
         'type', 'UsageRecorded', 'request_id', 'req-' || g, 'tenant_id', $1::uuid,
         'key_id', ('00000000-0000-0000-0000-00000000000' || (g % 10))::uuid,
         'model', ($3::text[])[1 + g % 5], 'endpoint', '/v1/chat/completions',
         'usage', json_build_object('input_tokens', 1000 + g % 500, 'cached_input_tokens', g % 200,
                                    'output_tokens', 200 + g % 300),
         'price_version', $9::bigint, 'charge_nano', ($7::bigint[])[1 + g % 3000],
         'base_nano', ($8::bigint[])[1 + g % 3000],
         'status', 'ok', 'latency_ms', 300, 'occurred_at', $4::timestamptz + g * $5::interval,
         'provider', split_part(($3::text[])[1 + g % 5], '-', 1)),
       $4::timestamptz + g * $5::interval
FROM generate_series($6::bigint, $2::bigint) AS g
"""

_MONEY_EVENT = """
INSERT INTO events (type, schema_version, tenant_id, idempotency_key, data, recorded_at)
VALUES ($1, 1, $2, $3, $4::json, $5)
"""


async def set_prices(pool: asyncpg.Pool) -> tuple[int, list[int], list[int]]:
    """Prices for the five models; the price version and each usage shape's charge and base."""
    async with pool.acquire() as conn:
        for model, (price_in, price_cached, price_out) in PRICES.items():
            await price_service.set_price(
                conn,
                None,
                PriceIn(
                    model=model,
                    input_per_mtok=Decimal(price_in),
                    cached_input_per_mtok=Decimal(price_cached),
                    output_per_mtok=Decimal(price_out),
                    margin_pct=Decimal(25),
                    effective_at=datetime(2020, 1, 1, tzinfo=UTC),
                ),
                ACTOR,
            )
        version = await current_price_version(conn)
        prices = {
            model: await effective_price(
                conn, tenant_id=None, model=model, version=version, at=PERIOD.starts_at(UTC)
            )
            for model in MODELS
        }
    charges, bases = [], []
    for g in range(SHAPES):
        price = prices[MODELS[g % 5]]
        assert price is not None
        priced = price_usage(
            TokenUsage(
                input_tokens=1000 + g % 500,
                cached_input_tokens=g % 200,
                output_tokens=200 + g % 300,
            ),
            price.price,
            margin_pct=price.margin_pct,
            credit_price_usd=price.credit_price_usd,
        )
        charges.append(priced.charge_nano)
        bases.append(priced.base_nano)
    return version, charges, bases


async def fold_log(pool: asyncpg.Pool, results: dict[str, float], label: str) -> None:
    """Billing's fold over the whole log, as the workers run it (one shard)."""
    events = await pool.fetchval("SELECT count(*) FROM events")
    print(f"folding {events:,} events with billing's fold ...", flush=True)
    started = time.perf_counter()
    await Folder(pool, shard_count=1).drain(timeout=7200)
    seconds = time.perf_counter() - started
    timed(label, seconds, results)
    print(f"  {events / seconds:,.0f} events/s", flush=True)
    await pool.execute("ANALYZE")


async def create_database() -> tuple[str, str]:
    name = f"tally_bench_finance_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base, _, query = ADMIN_URL.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + (f"?{query}" if query else "")
    return name, url


async def drop_database(name: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def add_tenant(pool: asyncpg.Pool, tenant_id: uuid.UUID, name: str) -> None:
    await pool.execute(
        "INSERT INTO tenants (id, name, mode, country, created_at)"
        " VALUES ($1, $2, 'prepaid', 'DE', '2025-01-01')",
        tenant_id,
        name,
    )


async def add_purchase(pool: asyncpg.Pool, tenant_id: uuid.UUID, n: int, at: datetime) -> None:
    data = {
        "type": "CreditsPurchased",
        "tenant_id": str(tenant_id),
        "purchase_id": f"cs_{tenant_id.hex[:8]}_{n}",
        "amount_nano": 2_000_000 * 10**9,
        "paid_minor": 200_000,
        "currency": "eur",
        "source": "checkout",
    }
    await pool.execute(
        _MONEY_EVENT,
        "CreditsPurchased",
        tenant_id,
        f"bench-p-{tenant_id}-{n}",
        json.dumps(data),
        at,
    )


def timed(label: str, seconds: float, results: dict[str, float]) -> None:
    results[label] = round(seconds, 3)
    print(f"  {label}: {seconds:.3f} s", flush=True)


async def big_tenant(
    pool: asyncpg.Pool,
    requests: int,
    pricing: tuple[int, list[int], list[int]],
    results: dict[str, float],
) -> None:
    settings = load_settings({**os.environ, "TALLY_DATABASE_URL": ""})
    config = finance_config(settings)
    tenant_id = uuid.uuid4()
    await add_tenant(pool, tenant_id, "Big Tenant")
    start, end = PERIOD.starts_at(config.tz), PERIOD.ends_at(config.tz)
    step_seconds = (end - start).total_seconds() / (requests + 2)
    print(f"generating {requests:,} usage events for one tenant-month ...", flush=True)
    started = time.perf_counter()
    await add_purchase(pool, tenant_id, 0, start)
    await generate_usage(pool, tenant_id, 1, requests, start, step_seconds, pricing)
    await add_purchase(pool, tenant_id, 1, start.replace(day=15))
    await pool.execute("ANALYZE events")
    print(f"  generated in {time.perf_counter() - started:.1f} s", flush=True)
    await fold_log(pool, results, "fold_big_tenant_s")

    print("tenant-month statement from billing's projections:", flush=True)
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        tenant = await tenant_by_id(conn, tenant_id)
        assert tenant is not None
        statement = await finance_service.statement(conn, config, tenant, PERIOD)
    timed("statement_s", time.perf_counter() - started, results)
    assert sum(line.requests for line in statement.usage_lines) == requests
    assert statement.totals.usage_nano == sum(
        pricing[1][g % SHAPES] for g in range(1, requests + 1)
    )
    started = time.perf_counter()

    async def one():  # type: ignore[no-untyped-def]
        yield statement

    csv_bytes = b"".join([chunk async for chunk in stream_statements_csv(one())])
    pdf_bytes = render_statement_pdf(statement, config)
    timed("statement_render_csv_pdf_s", time.perf_counter() - started, results)
    print(f"  csv {len(csv_bytes)} bytes, pdf {len(pdf_bytes)} bytes", flush=True)

    print("the same usage from the log (the reconciliation's reference, the old path):")
    started = time.perf_counter()
    async with pool.acquire() as conn:
        from_log = await log_usage_by_model(conn, start, end, tenant_id)
    timed("usage_from_log_s", time.perf_counter() - started, results)
    assert sum(agg.charge_nano for agg in from_log) == statement.totals.usage_nano


async def generate_usage(
    pool: asyncpg.Pool,
    tenant_id: uuid.UUID,
    first: int,
    last: int,
    start: datetime,
    step_seconds: float,
    pricing: tuple[int, list[int], list[int]],
) -> None:
    version, charges, bases = pricing
    chunk = 100_000
    for low in range(first, last + 1, chunk):
        high = min(last, low + chunk - 1)
        await pool.execute(
            _GENERATE_USAGE,
            tenant_id,
            high,
            MODELS,
            start,
            timedelta(seconds=step_seconds),
            low,
            charges,
            bases,
            version,
        )


async def many_tenants(
    pool: asyncpg.Pool,
    tenants: int,
    per_tenant: int,
    pricing: tuple[int, list[int], list[int]],
    results: dict[str, float],
    *,
    pdf_zip: bool = True,
) -> None:
    settings = load_settings({**os.environ, "TALLY_DATABASE_URL": ""})
    config = finance_config(settings)
    start = PERIOD.starts_at(config.tz)
    print(
        f"generating {tenants:,} tenants with {per_tenant} requests and 1 purchase each ...",
        flush=True,
    )
    started = time.perf_counter()
    ids = [uuid.uuid4() for _ in range(tenants)]
    await pool.executemany(
        "INSERT INTO tenants (id, name, mode, country, created_at)"
        " VALUES ($1, $2, 'prepaid', 'DE', '2025-01-01')",
        [(tenant_id, f"Tenant {n:05d}") for n, tenant_id in enumerate(ids)],
    )
    step = (PERIOD.ends_at(config.tz) - start).total_seconds() / (per_tenant + 2)
    for n, tenant_id in enumerate(ids):
        await add_purchase(pool, tenant_id, 0, start.replace(day=1 + n % 27))
        await generate_usage(pool, tenant_id, 1, per_tenant, start, step, pricing)
    await pool.execute("ANALYZE events")
    print(f"  generated in {time.perf_counter() - started:.1f} s", flush=True)
    await fold_log(pool, results, "fold_many_tenants_s")

    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "TALLY_DATABASE_URL": pool_url}
        open_csv = Path(folder) / "open.csv"
        measured = run_cli(
            env,
            "statement", "export", "--all", "--period", str(PERIOD), "--format", "csv",
            "--out", str(open_csv),
        )  # fmt: skip
        timed("all_tenant_csv_open_period_s", measured["seconds"], results)
        results["all_tenant_csv_open_period_peak_mib"] = round(measured["peak_rss_mib"], 1)
        print(f"  peak RSS {measured['peak_rss_mib']:.0f} MiB", flush=True)

        measured = run_cli(env, "finance", "close", "--period", str(PERIOD))
        timed("close_period_s", measured["seconds"], results)
        results["close_period_peak_mib"] = round(measured["peak_rss_mib"], 1)
        print(f"  peak RSS {measured['peak_rss_mib']:.0f} MiB", flush=True)

        closed_csv = Path(folder) / "closed.csv"
        measured = run_cli(
            env,
            "statement", "export", "--all", "--period", str(PERIOD), "--format", "csv",
            "--out", str(closed_csv),
        )  # fmt: skip
        timed("all_tenant_csv_closed_period_s", measured["seconds"], results)
        results["all_tenant_csv_closed_period_peak_mib"] = round(measured["peak_rss_mib"], 1)
        print(
            f"  peak RSS {measured['peak_rss_mib']:.0f} MiB,"
            f" {closed_csv.stat().st_size / 2**20:.1f} MiB written",
            flush=True,
        )
        docs_csv = Path(folder) / "documents.csv"
        measured = run_cli(
            env,
            "invoice", "export", "--all", "--period", str(PERIOD), "--format", "csv",
            "--out", str(docs_csv),
        )  # fmt: skip
        timed("all_tenant_invoice_csv_s", measured["seconds"], results)
        results["all_tenant_invoice_csv_peak_mib"] = round(measured["peak_rss_mib"], 1)
        print(f"  peak RSS {measured['peak_rss_mib']:.0f} MiB", flush=True)
        if not pdf_zip:
            return
        zip_path = Path(folder) / "documents.zip"
        measured = run_cli(
            env,
            "invoice", "export", "--all", "--period", str(PERIOD), "--format", "pdf",
            "--out", str(zip_path),
        )  # fmt: skip
        timed("all_tenant_invoice_pdf_zip_s", measured["seconds"], results)
        results["all_tenant_invoice_pdf_zip_peak_mib"] = round(measured["peak_rss_mib"], 1)
        print(
            f"  peak RSS {measured['peak_rss_mib']:.0f} MiB,"
            f" {zip_path.stat().st_size / 2**20:.1f} MiB written",
            flush=True,
        )


pool_url = ""


def run_cli(env: dict[str, str], *args: str) -> dict[str, float]:
    print(f"tally {' '.join(args[:6])} ...", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "bench.finance.measure", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    measured: dict[str, float] = json.loads(done.stderr.strip().splitlines()[-1])
    return measured


async def main() -> None:
    global pool_url
    parser = argparse.ArgumentParser(
        description="Finance on billing's projections: a big tenant-month, then many tenants."
    )
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--per-tenant", type=int, default=20)
    parser.add_argument(
        "--no-pdf-zip",
        action="store_true",
        help="skip the all-tenant ZIP of PDFs (minutes at 10,000 tenants; finance-independent)",
    )
    args = parser.parse_args()
    name, url = await create_database()
    pool_url = url
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    results: dict[str, float] = {}
    try:
        await apply_migrations(url)
        settings = load_settings({"TALLY_DATABASE_URL": url})
        pool = await create_pool(settings, min_size=1, max_size=4)
        try:
            pricing = await set_prices(pool)
            if args.requests:
                await big_tenant(pool, args.requests, pricing, results)
            # Start the second case from an empty log and empty projections.
            await pool.execute(
                "TRUNCATE events, tenants, consumer_checkpoints, balances, ledger_entries,"
                " usage_rollups, credit_lots, credit_consumption_daily, pricing_mismatches,"
                " fold_layout CASCADE"
            )
            if args.tenants:
                await many_tenants(
                    pool,
                    args.tenants,
                    args.per_tenant,
                    pricing,
                    results,
                    pdf_zip=not args.no_pdf_zip,
                )
        finally:
            await pool.close()
    finally:
        await drop_database(name)
    print(json.dumps({"when": datetime.now(UTC).isoformat(timespec="seconds"), **results}))


if __name__ == "__main__":
    asyncio.run(main())
