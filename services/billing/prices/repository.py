"""SQL of the price book's write side and its listings."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import asyncpg

from tally.db import Connection

_INSERT_MODEL_PRICE = """
INSERT INTO model_prices (model, price_version, price, margin_pct, effective_at)
VALUES ($1, $2, $3::text::jsonb, $4, $5)
"""
_INSERT_DEFAULT_MARGIN = "INSERT INTO default_margins (price_version, margin_pct) VALUES ($1, $2)"
_INSERT_CREDIT_PRICE = "INSERT INTO credit_prices (price_version, credit_price_usd) VALUES ($1, $2)"
_CURRENT_DEFAULT_MARGIN = (
    "SELECT margin_pct FROM default_margins ORDER BY price_version DESC LIMIT 1"
)
# Models whose newest row follows the default margin (they move with it).
_MODELS_ON_DEFAULT = """
SELECT DISTINCT ON (model) model, margin_pct FROM model_prices
ORDER BY model, price_version DESC
"""
# Each tenant's override in force now (the newest row; NULL means removed).
_TENANT_OVERRIDES = """
SELECT DISTINCT ON (tenant_id) tenant_id, margin_pct FROM tenant_margins
ORDER BY tenant_id, price_version DESC
"""
_HISTORY = """
SELECT model, price_version, price::text AS price, margin_pct, effective_at, created_at
FROM model_prices WHERE ($1::text IS NULL OR model = $1)
ORDER BY price_version DESC LIMIT $2
"""


async def insert_model_price(
    conn: Connection,
    model: str,
    version: int,
    price_json: str,
    margin_pct: Decimal | None,
    effective_at: datetime,
) -> None:
    await conn.execute(_INSERT_MODEL_PRICE, model, version, price_json, margin_pct, effective_at)


async def insert_default_margin(conn: Connection, version: int, margin_pct: Decimal) -> None:
    await conn.execute(_INSERT_DEFAULT_MARGIN, version, margin_pct)


async def insert_credit_price(conn: Connection, version: int, usd: Decimal) -> None:
    await conn.execute(_INSERT_CREDIT_PRICE, version, usd)


async def current_default_margin(conn: Connection) -> Decimal | None:
    margin: Decimal | None = await conn.fetchval(_CURRENT_DEFAULT_MARGIN)
    return margin


async def models_on_default_margin(conn: Connection) -> list[str]:
    return [r["model"] for r in await conn.fetch(_MODELS_ON_DEFAULT) if r["margin_pct"] is None]


async def tenant_overrides(conn: Connection) -> list[tuple[UUID, Decimal]]:
    return [
        (r["tenant_id"], r["margin_pct"])
        for r in await conn.fetch(_TENANT_OVERRIDES)
        if r["margin_pct"] is not None
    ]


async def history(conn: Connection, model: str | None, limit: int) -> list[asyncpg.Record]:
    return await conn.fetch(_HISTORY, model, limit)
