"""Finance reads billing's projections: period bounds in the finance time zone, the occurred_at
clock, a fold that is behind, disputes and repaid debt as the ledger records them."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta

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
from tally.events.billing import BalanceAdjusted, CreditsExpired, CreditsFrozen, CreditsUnfrozen
from tally.events.tenant import Actor
from tests.integration.finance.conftest import (
    C,
    add_tenant,
    at,
    fold,
    granted,
    issue_all,
    purchased,
    record,
    refunded,
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


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_histories_give_statements_that_chain_and_agree_with_billings_lots(
    pool: asyncpg.Pool, berlin: FinanceConfig, seed: int
) -> None:
    rng = random.Random(seed)
    tenant = await add_tenant(pool, f"Random {seed}")
    purchases: list[tuple[str, int]] = []
    grants: list[uuid.UUID] = []
    moment = at("2025-02-27T20:00")
    for n in range(40):
        moment += timedelta(hours=rng.randrange(1, 60))
        if moment >= at("2025-05-01"):
            break
        roll = rng.random()
        if roll < 0.15 or not purchases:
            credits = rng.randrange(1, 30)
            purchases.append((f"cs_{seed}_{n}", credits))
            await record(pool, purchased(tenant, f"cs_{seed}_{n}", credits, credits * 100), moment)
        elif roll < 0.25:
            grant = granted(tenant, rng.randrange(1, 5), expires_at=moment + timedelta(days=20))
            grants.append(grant.grant_id)
            await record(pool, grant, moment)
        elif roll < 0.3 and grants:
            expiry = CreditsExpired(tenant_id=tenant, grant_id=grants.pop(0))
            await record(pool, expiry, moment)
        elif roll < 0.35:
            purchase_id, credits = purchases[rng.randrange(len(purchases))]
            await record(pool, refunded(tenant, f"re_{seed}_{n}", purchase_id, 1, 100), moment)
        elif roll < 0.4:
            adjustment = BalanceAdjusted(
                tenant_id=tenant,
                adjustment_id=uuid.uuid4(),
                amount_nano=rng.choice([1, -1]) * rng.randrange(1, C),
                reason="correction",
                actor=Actor(kind="cli"),
            )
            await record(pool, adjustment, moment)
        else:
            charge = rng.randrange(1, 3 * C)
            # Occurred up to a minute before it was recorded: across a bound now and then.
            occurred = moment - timedelta(seconds=rng.randrange(0, 60))
            await record(pool, used(tenant, "gpt-4o", charge, charge // 3, at=occurred), moment)
    await fold(pool)

    months = [Period(2025, 2), MARCH, APRIL, Period(2025, 5)]
    statements = [await statement(pool, berlin, tenant, month) for month in months]
    assert statements[0].opening_balance_nano == 0
    for earlier, later in itertools.pairwise(statements):
        assert later.opening_balance_nano == earlier.closing_balance_nano
        assert later.opening == earlier.closing
    for s in statements:
        assert s.opening_balance_nano + statement_lines_sum(s) == s.closing_balance_nano
        assert s.totals.usage_nano == (
            s.totals.usage_paid_nano
            + s.totals.usage_promotional_nano
            + s.totals.usage_unfunded_nano
        )
    # After the last month every event is in: the positions are billing's lots and debt now.
    last = statements[-1].closing
    lots = await pool.fetch(
        "SELECT funding, sum(remaining_nano + frozen_nano) AS left FROM credit_lots"
        " WHERE tenant_id = $1 GROUP BY funding",
        tenant,
    )
    left = {row["funding"]: int(row["left"]) for row in lots}
    balance = await pool.fetchrow(
        "SELECT balance_nano, debt_usage_nano, debt_other_nano FROM balances WHERE tenant_id = $1",
        tenant,
    )
    assert last.balance_nano == balance["balance_nano"]
    assert last.paid_nano == left.get("paid", 0)
    assert last.promotional_nano == left.get("promotional", 0)
    assert last.debt_nano == balance["debt_usage_nano"]
    assert last.frozen_nano == balance["debt_other_nano"]
