"""SQL of usage analytics, read from the hourly rollups."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from tally.db import Connection

_SUMS = """
sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
sum(input_tokens)::bigint AS input_tokens, sum(cached_input_tokens)::bigint AS cached_input_tokens,
sum(cache_write_tokens)::bigint AS cache_write_tokens, sum(output_tokens)::bigint AS output_tokens,
sum(reasoning_tokens)::bigint AS reasoning_tokens, sum(images)::bigint AS images,
sum(charge_nano)::bigint AS charge_nano, sum(base_nano)::bigint AS base_nano,
sum(margin_nano)::bigint AS margin_nano, sum(paid_nano)::bigint AS paid_nano,
sum(promo_nano)::bigint AS promo_nano, sum(unfunded_nano)::bigint AS unfunded_nano
"""

# One tenant, grouped by bucket (hour or day, UTC), model and key; the service folds these rows
# into totals, breakdowns and chart series.
_TENANT_USAGE = f"""
SELECT date_trunc($4, hour, 'UTC') AS bucket, model, key_id, {_SUMS}
FROM usage_rollups
WHERE tenant_id = $1 AND hour >= $2 AND hour < $3
  AND ($5::text IS NULL OR model = $5) AND ($6::uuid IS NULL OR key_id = $6)
GROUP BY 1, 2, 3
ORDER BY 1
"""  # noqa: S608

_OVERVIEW = f"""
SELECT r.tenant_id, t.name AS tenant_name, r.model, {_SUMS}
FROM usage_rollups r LEFT JOIN tenants t ON t.id = r.tenant_id
WHERE r.hour >= $1 AND r.hour < $2
GROUP BY r.tenant_id, t.name, r.model
"""  # noqa: S608


async def tenant_usage(
    conn: Connection,
    tenant_id: UUID,
    *,
    since: datetime,
    until: datetime,
    granularity: str,
    model: str | None,
    key_id: UUID | None,
) -> list[asyncpg.Record]:
    return await conn.fetch(_TENANT_USAGE, tenant_id, since, until, granularity, model, key_id)


async def overview(conn: Connection, *, since: datetime, until: datetime) -> list[asyncpg.Record]:
    return await conn.fetch(_OVERVIEW, since, until)
