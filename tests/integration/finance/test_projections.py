"""Finance reads billing's projections: period bounds in the finance time zone, the occurred_at
clock, a fold that is behind, disputes and repaid debt as the ledger records them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest

from billing.finance.config import FinanceConfig, build_finance_config
from billing.finance.errors import CloseDeferred
from billing.finance.period import Period
from billing.finance.repository import tenant_by_id
from billing.finance.schemas import Statement
from billing.finance.service import finance_service, statement_lines_sum
from tally.config import get_settings
from tally.events.billing import CreditsFrozen, CreditsUnfrozen
from tests.integration.finance.conftest import (
    C,
    add_tenant,
    at,
    fold,
    issue_all,
    purchased,
    record,
    used,
)

MARCH, APRIL = Period(2025, 3), Period(2025, 4)
NOW = datetime(2025, 6, 15, tzinfo=UTC)


@pytest.fixture
def berlin(config: FinanceConfig) -> FinanceConfig:
    settings = msgspec.structs.replace(get_settings(), finance_timezone="Europe/Berlin")
    return msgspec.structs.replace(config, timezone=build_finance_config(settings).timezone)


async def statement(
    pool: asyncpg.Pool, config: FinanceConfig, tenant_id: uuid.UUID, period: Period
) -> Statement:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        tenant = await tenant_by_id(conn, tenant_id)
        assert tenant is not None
        return await finance_service.statement(conn, config, tenant, period, now=NOW)


async def test_a_month_in_berlin_starts_at_22_utc_and_usage_counts_when_it_occurred(
    pool: asyncpg.Pool, berlin: FinanceConfig
) -> None:
    tenant = await add_tenant(pool, "Berlin GmbH")
    await record(pool, purchased(tenant, "cs_1", 100, 11900), at("2025-03-10"))
    # April starts at 2025-03-31T22:00Z in Berlin (summer time).
    before = used(tenant, "gpt-4o", 1 * C, C // 2, at=at("2025-03-31T21:59:59"))
    after = used(tenant, "gpt-4o", 2 * C, C // 2, at=at("2025-03-31T22:00"))
    # Recorded after the bound: it still belongs to March, when it occurred (the rollup clock).
    await record(pool, before, at("2025-03-31T22:00:30"))
    await record(pool, after, at("2025-03-31T22:00:31"))
    await record(pool, purchased(tenant, "cs_2", 10, 1190), at("2025-03-31T22:30"))
    await fold(pool)

    march = await statement(pool, berlin, tenant, MARCH)
    april = await statement(pool, berlin, tenant, APRIL)
    assert march.starts_at == at("2025-02-28T23:00") and march.ends_at == at("2025-03-31T22:00")
    assert [line.credits_nano for line in march.usage_lines] == [1 * C]
    assert [line.credits_nano for line in april.usage_lines] == [2 * C]
    assert [line.reference for line in march.money_lines] == ["cs_1"]
    assert [(line.reference, str(line.date)) for line in april.money_lines] == [
        ("cs_2", "2025-04-01")
    ]
    assert march.closing_balance_nano == 99 * C == april.opening_balance_nano
    assert april.closing_balance_nano == 99 * C + 10 * C - 2 * C
    for s in (march, april):
        assert s.opening_balance_nano + statement_lines_sum(s) == s.closing_balance_nano

    await issue_all(pool, berlin, 2)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        report = await finance_service.reconciliation(conn, berlin, MARCH, now=NOW)
    assert report.ok, [c for c in report.checks if not c.ok]
    # The same history in UTC puts the bound two hours later: all the usage is March's.
    utc_march = await statement(
        pool, msgspec.structs.replace(berlin, timezone="UTC"), tenant, MARCH
    )
    assert sum(line.credits_nano for line in utc_march.usage_lines) == 3 * C


async def test_the_close_waits_for_the_billing_fold_and_defers_rather_than_miss_usage(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await add_tenant(pool, "Behind")
    await record(pool, purchased(tenant, "cs_1", 10, 1190), at("2025-03-05"))
    await fold(pool)
    # Usage of March that the fold has not applied yet.
    await record(
        pool, used(tenant, "gpt-4o", 3 * C, C, at=at("2025-03-31T23:59")), at("2025-04-01")
    )

    # A provisional statement shows what the fold has applied, no more.
    assert (await statement(pool, config, tenant, MARCH)).usage_lines == []
    with pytest.raises(CloseDeferred, match="billing fold has not applied 1 event"):
        await finance_service.close_through(pool, config, MARCH, now=NOW, wait_seconds=0.3)
    assert await pool.fetchval("SELECT count(*) FROM finance_periods") == 0

    await fold(pool)
    closed = await finance_service.close_through(pool, config, MARCH, now=NOW)
    assert [p.period for p in closed.closed] == ["2025-03"]
    final = await statement(pool, config, tenant, MARCH)
    assert final.status == "final"
    assert final.totals.usage_nano == 3 * C
    assert final.closing_balance_nano == 7 * C


async def test_a_dispute_holds_credits_in_the_ledger_and_a_lost_one_stays_taken(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await add_tenant(pool, "Disputed")
    await record(pool, purchased(tenant, "cs_1", 10, 1190), at("2025-03-05"))
    frozen = CreditsFrozen(
        tenant_id=tenant, dispute_id="dp_1", purchase_id="cs_1", amount_nano=4 * C
    )
    await record(pool, frozen, at("2025-03-06"))
    await record(
        pool, CreditsUnfrozen(tenant_id=tenant, dispute_id="dp_1", outcome="lost"), at("2025-04-02")
    )
    await fold(pool)

    march = await statement(pool, config, tenant, MARCH)
    assert [(m.kind, m.amount_nano) for m in march.money_lines] == [
        ("purchase", 10 * C),
        ("dispute_frozen", -4 * C),
    ]
    assert march.totals.chargebacks_nano == 4 * C
    assert march.closing_balance_nano == 6 * C
    assert (march.closing.paid_nano, march.closing.frozen_nano) == (10 * C, 4 * C)
    april = await statement(pool, config, tenant, APRIL)
    assert april.money_lines == [] and april.closing_balance_nano == 6 * C
    # The lost dispute took the held credits for good: no longer frozen, no longer paid.
    assert (april.closing.paid_nano, april.closing.frozen_nano) == (6 * C, 0)


async def test_usage_no_credits_covered_is_debt_until_a_purchase_repays_it(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await add_tenant(pool, "Overdrawn")
    await record(pool, used(tenant, "gpt-4o", 5 * C, C, at=at("2025-03-09")), at("2025-03-09"))
    await record(pool, purchased(tenant, "cs_1", 20, 2380), at("2025-04-03"))
    await fold(pool)

    march = await statement(pool, config, tenant, MARCH)
    assert march.totals.usage_unfunded_nano == 5 * C
    assert (march.closing.balance_nano, march.closing.debt_nano) == (-5 * C, 5 * C)
    april = await statement(pool, config, tenant, APRIL)
    assert april.totals.debt_settled_paid_nano == 5 * C
    assert (april.closing.paid_nano, april.closing.debt_nano) == (15 * C, 0)
    assert april.closing_balance_nano == 15 * C
