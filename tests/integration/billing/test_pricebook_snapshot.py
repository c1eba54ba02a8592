"""The fold's in-memory price book answers exactly what the SQL `effective_price` answers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tally.pricebook import PriceBookSnapshot, effective_price
from tally.pricing import ModelPrice
from tests.fixtures.services import _TRUNCATE_ALL

T0 = datetime(2026, 3, 1, tzinfo=UTC)
TENANTS = [uuid.UUID(int=i + 1) for i in range(3)]
MODELS = ["m1", "m2"]

margins = st.one_of(st.none(), st.integers(-50, 300).map(Decimal))
change = st.one_of(
    st.tuples(
        st.just("model"), st.sampled_from(MODELS), st.integers(0, 100), margins, st.integers(-3, 3)
    ),
    st.tuples(st.just("default"), st.integers(0, 100).map(Decimal)),
    st.tuples(st.just("credit"), st.sampled_from(["1", "0.01", "2.5", "3"]).map(Decimal)),
    st.tuples(st.just("tenant"), st.sampled_from(TENANTS), margins),
)
query = st.tuples(
    st.sampled_from([None, *TENANTS]),
    st.sampled_from([*MODELS, "unknown"]),
    st.integers(0, 30),
    st.integers(-4, 4),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=st.lists(change, max_size=20), queries=st.lists(query, min_size=1, max_size=15))
async def test_snapshot_equals_the_sql_price_book(
    pool: asyncpg.Pool, changes: list[tuple[object, ...]], queries: list[tuple[object, ...]]
) -> None:
    async with pool.acquire() as conn:
        await conn.execute(_TRUNCATE_ALL)
        for version, item in enumerate(changes, start=1):
            if item[0] == "model":
                _, model, cents, margin, days = item
                price = ModelPrice(input_per_mtok=Decimal(cents) / 100, output_per_mtok=Decimal(1))  # type: ignore[operator]
                await conn.execute(
                    "INSERT INTO model_prices VALUES ($1, $2, $3::text::jsonb, $4, $5)",
                    model,
                    version,
                    msgspec.json.encode(price).decode(),
                    margin,
                    T0 + timedelta(days=days),  # type: ignore[arg-type]
                )
            elif item[0] == "default":
                await conn.execute("INSERT INTO default_margins VALUES ($1, $2)", version, item[1])
            elif item[0] == "credit":
                await conn.execute("INSERT INTO credit_prices VALUES ($1, $2)", version, item[1])
            else:
                await conn.execute(
                    "INSERT INTO tenant_margins VALUES ($1, $2, $3)", item[1], version, item[2]
                )
        snapshot = await PriceBookSnapshot.load(conn)
        for tenant, model, version, days in queries:
            at = T0 + timedelta(days=days)  # type: ignore[arg-type]
            expected = await effective_price(
                conn, tenant_id=tenant, model=model, version=version, at=at
            )  # type: ignore[arg-type]
            # Twice: the second answer comes from the snapshot's memo.
            for _ in range(2):
                got = snapshot.effective_price(
                    tenant_id=tenant, model=model, version=version, at=at
                )  # type: ignore[arg-type]
                assert got == expected
