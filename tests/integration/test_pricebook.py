from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import msgspec

from tally.pricebook import current_price_version, effective_price
from tally.pricing import ModelPrice

NOW = datetime(2026, 11, 1, tzinfo=UTC)


async def next_version(conn: asyncpg.Connection) -> int:
    version: int = await conn.fetchval("SELECT nextval('price_book_version_seq')")
    return version


async def set_price(conn, model: str, input_usd: str, margin: str | None, at=NOW) -> int:  # type: ignore[no-untyped-def]
    version = await next_version(conn)
    price = ModelPrice(input_per_mtok=Decimal(input_usd), output_per_mtok=Decimal(10))
    await conn.execute(
        "INSERT INTO model_prices (model, price_version, price, margin_pct, effective_at)"
        " VALUES ($1, $2, $3::text::jsonb, $4, $5)",
        model,
        version,
        msgspec.json.encode(price).decode(),
        Decimal(margin) if margin else None,
        at,
    )
    return version


async def test_each_version_prices_with_what_was_in_force_then(pool: asyncpg.Pool) -> None:
    tenant = uuid.uuid4()
    async with pool.acquire() as conn:
        assert await current_price_version(conn) == 0
        v1 = await set_price(conn, "gpt-x", "2", None)
        v2 = await next_version(conn)
        await conn.execute("INSERT INTO default_margins VALUES ($1, 25)", v2)
        v3 = await set_price(conn, "gpt-x", "3", "10")
        v4 = await next_version(conn)
        await conn.execute("INSERT INTO tenant_margins VALUES ($1, $2, -5)", tenant, v4)
        v5 = await next_version(conn)
        await conn.execute("INSERT INTO credit_prices VALUES ($1, 0.01)", v5)
        assert await current_price_version(conn) == v5

        async def at(version: int, who: uuid.UUID | None = tenant):  # type: ignore[no-untyped-def]
            price = await effective_price(
                conn, tenant_id=who, model="gpt-x", version=version, at=NOW + timedelta(days=1)
            )
            assert price is not None
            return price.price.input_per_mtok, price.margin_pct, price.credit_price_usd

        assert await at(v1) == (Decimal(2), Decimal(0), Decimal(1))
        assert await at(v2) == (Decimal(2), Decimal(25), Decimal(1))
        assert await at(v3) == (Decimal(3), Decimal(10), Decimal(1))
        assert await at(v4) == (Decimal(3), Decimal(-5), Decimal(1))
        assert await at(v4, uuid.uuid4()) == (Decimal(3), Decimal(10), Decimal(1))
        assert await at(v5) == (Decimal(3), Decimal(-5), Decimal("0.01"))
        assert (
            await effective_price(conn, tenant_id=tenant, model="other", version=v5, at=NOW) is None
        )


async def test_a_price_takes_effect_at_its_effective_time(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await set_price(conn, "m", "1", None)
        v2 = await set_price(conn, "m", "9", None, at=NOW + timedelta(days=10))
        before = await effective_price(conn, tenant_id=None, model="m", version=v2, at=NOW)
        after = await effective_price(
            conn, tenant_id=None, model="m", version=v2, at=NOW + timedelta(days=11)
        )
    assert before is not None and after is not None
    assert (before.price.input_per_mtok, after.price.input_per_mtok) == (Decimal(1), Decimal(9))
