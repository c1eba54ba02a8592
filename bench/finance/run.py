"""Finance benchmark: exporting a tenant-month of 1,000,000 requests, and the all-tenant CSV of
10,000 tenants (time and peak memory), plus the month-end close that precedes it.

Rerun: make bench-finance   (or: .venv/bin/python -m bench.finance.run [--requests N]
[--tenants N])
Uses a throwaway database on TALLY_BENCH_PG_ADMIN_URL (default: local Postgres on :5432).

The statement figures are read from the event log itself (finance's LOG SOURCE, see
billing/finance/repository.py). The billing fold's hourly rollups are not on this branch, so the
harness also times the same usage query against a rollup-shaped table it fills itself
(`bench_usage_rollups`: tenant x key x model x hour), as the estimate of the path finance takes
once it reads billing's rollups.
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
from pathlib import Path

import asyncpg

from billing.finance.config import finance_config
from billing.finance.documents.csv_export import stream_statements_csv
from billing.finance.documents.pdf import render_statement_pdf
from billing.finance.period import Period
from billing.finance.repository import tenant_by_id
from billing.finance.service import finance_service
from tally.config import load_settings
from tally.db import create_pool
from tally.migrations import apply_migrations

ADMIN_URL = os.environ.get(
    "TALLY_BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
PERIOD = Period(2025, 3)
MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet", "gemini-pro", "deepseek-chat"]

# One month of usage for one tenant, generated inside Postgres: the same JSON a UsageRecorded
# event holds, spread evenly over March 2025 (UTC), 10 API keys, 5 models.
_GENERATE_USAGE = """
INSERT INTO events (type, schema_version, tenant_id, idempotency_key, data, recorded_at)
SELECT 'UsageRecorded', 1, $1::uuid, 'bench-' || $1::text || '-' || g,
       json_build_object(
         'type', 'UsageRecorded', 'request_id', 'req-' || g, 'tenant_id', $1::uuid,
         'key_id', ('00000000-0000-0000-0000-00000000000' || (g % 10))::uuid,
         'model', ($3::text[])[1 + g % 5], 'endpoint', '/v1/chat/completions',
         'usage', json_build_object('input_tokens', 1000 + g % 500, 'cached_input_tokens', g % 200,
                                    'output_tokens', 200 + g % 300),
         'price_version', 1, 'charge_nano', 1000000 + g % 7919, 'base_nano', 800000 + g % 997,
         'status', 'ok', 'latency_ms', 300, 'occurred_at', $4::timestamptz + g * $5::interval,
         'provider', split_part(($3::text[])[1 + g % 5], '-', 1)),
       $4::timestamptz + g * $5::interval
FROM generate_series($6::bigint, $2::bigint) AS g
"""

_MONEY_EVENT = """
INSERT INTO events (type, schema_version, tenant_id, idempotency_key, data, recorded_at)
VALUES ($1, 1, $2, $3, $4::json, $5)
"""

_ROLLUP_TABLE = """
CREATE TABLE bench_usage_rollups (
    tenant_id uuid NOT NULL, key_id uuid NOT NULL, model text NOT NULL, provider text NOT NULL,
    hour timestamptz NOT NULL, requests bigint NOT NULL, input_tokens bigint NOT NULL,
    cached_input_tokens bigint NOT NULL, cache_write_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL, reasoning_tokens bigint NOT NULL, base_nano bigint NOT NULL,
    charge_nano bigint NOT NULL,
    PRIMARY KEY (tenant_id, hour, key_id, model, provider)
)
"""
_FILL_ROLLUPS = """
INSERT INTO bench_usage_rollups
SELECT e.tenant_id, u.key_id, u.model, coalesce(u.provider, ''),
       date_trunc('hour', e.recorded_at), count(*),
       sum(coalesce(t.input_tokens, 0)), sum(coalesce(t.cached_input_tokens, 0)),
       sum(coalesce(t.cache_write_tokens, 0)), sum(coalesce(t.output_tokens, 0)),
       sum(coalesce(t.reasoning_tokens, 0)), sum(u.base_nano), sum(u.charge_nano)
FROM events e
CROSS JOIN LATERAL json_to_record(e.data)
    AS u(key_id uuid, model text, provider text, base_nano bigint, charge_nano bigint, usage json)
CROSS JOIN LATERAL json_to_record(u.usage)
    AS t(input_tokens bigint, cached_input_tokens bigint, cache_write_tokens bigint,
         output_tokens bigint, reasoning_tokens bigint)
WHERE e.type = 'UsageRecorded'
GROUP BY 1, 2, 3, 4, 5
"""
_USAGE_FROM_ROLLUPS = """
SELECT model, provider, sum(requests), sum(input_tokens), sum(cached_input_tokens),
       sum(cache_write_tokens), sum(output_tokens), sum(reasoning_tokens), sum(base_nano),
       sum(charge_nano)
FROM bench_usage_rollups
WHERE tenant_id = $1 AND hour >= $2 AND hour < $3
GROUP BY model, provider
"""


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


async def big_tenant(pool: asyncpg.Pool, requests: int, results: dict[str, float]) -> None:
    settings = load_settings({**os.environ, "TALLY_DATABASE_URL": ""})
    config = finance_config(settings)
    tenant_id = uuid.uuid4()
    await add_tenant(pool, tenant_id, "Big Tenant")
    start, end = PERIOD.starts_at(config.tz), PERIOD.ends_at(config.tz)
    step_seconds = (end - start).total_seconds() / (requests + 2)
    print(f"generating {requests:,} usage events for one tenant-month ...", flush=True)
    started = time.perf_counter()
    await add_purchase(pool, tenant_id, 0, start)
    chunk = 100_000
    for first in range(1, requests + 1, chunk):
        last = min(requests, first + chunk - 1)
        await pool.execute(
            _GENERATE_USAGE, tenant_id, last, MODELS, start, timedelta(seconds=step_seconds), first
        )
    await add_purchase(pool, tenant_id, 1, start.replace(day=15))
    await pool.execute("ANALYZE events")
    print(f"  generated in {time.perf_counter() - started:.1f} s", flush=True)

    print("tenant-month statement from the event log:", flush=True)
    started = time.perf_counter()
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        tenant = await tenant_by_id(conn, tenant_id)
        assert tenant is not None
        statement = await finance_service.statement(conn, config, tenant, PERIOD)
    timed("statement_from_log_s", time.perf_counter() - started, results)
    assert sum(line.requests for line in statement.usage_lines) == requests
    started = time.perf_counter()

    async def one():  # type: ignore[no-untyped-def]
        yield statement

    csv_bytes = b"".join([chunk async for chunk in stream_statements_csv(one())])
    pdf_bytes = render_statement_pdf(statement, config)
    timed("statement_render_csv_pdf_s", time.perf_counter() - started, results)
    print(f"  csv {len(csv_bytes)} bytes, pdf {len(pdf_bytes)} bytes", flush=True)

    print("the same usage figures from a rollup-shaped table (tenant x key x model x hour):")
    started = time.perf_counter()
    await pool.execute(_ROLLUP_TABLE)
    await pool.execute(_FILL_ROLLUPS)
    rows = await pool.fetchval("SELECT count(*) FROM bench_usage_rollups")
    print(f"  filled {rows:,} rollup rows in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    usage = await pool.fetch(_USAGE_FROM_ROLLUPS, tenant_id, start, end)
    timed("usage_from_rollups_s", time.perf_counter() - started, results)
    assert sum(int(row[2]) for row in usage) == requests
    assert sum(int(row[9]) for row in usage) == statement.totals.usage_nano
    await pool.execute("DROP TABLE bench_usage_rollups")


async def many_tenants(
    pool: asyncpg.Pool, tenants: int, per_tenant: int, results: dict[str, float]
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
        await pool.execute(
            _GENERATE_USAGE, tenant_id, per_tenant, MODELS, start, timedelta(seconds=step), 1
        )
    await pool.execute("ANALYZE events")
    print(f"  generated in {time.perf_counter() - started:.1f} s", flush=True)

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
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--per-tenant", type=int, default=20)
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
            if args.requests:
                await big_tenant(pool, args.requests, results)
            await pool.execute("TRUNCATE events, tenants, consumer_checkpoints CASCADE")
            if args.tenants:
                await many_tenants(pool, args.tenants, args.per_tenant, results)
        finally:
            await pool.close()
    finally:
        await drop_database(name)
    print(json.dumps({"when": datetime.now(UTC).isoformat(timespec="seconds"), **results}))


if __name__ == "__main__":
    asyncio.run(main())
