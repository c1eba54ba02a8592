"""Statements, the period close and the reconciliation report, proven against the log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest

from billing.finance.config import FinanceConfig
from billing.finance.errors import PeriodNotEnded, PeriodNotStarted
from billing.finance.period import Period
from billing.finance.repository import tenant_by_id
from billing.finance.service import finance_service, statement_lines_sum
from tally.events.billing import BalanceAdjusted, CreditsExpired
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

MARCH, APRIL, MAY = Period(2025, 3), Period(2025, 4), Period(2025, 5)
NOW = datetime(2025, 6, 15, tzinfo=UTC)


async def statement(pool: asyncpg.Pool, config: FinanceConfig, tenant_id, period):  # type: ignore[no-untyped-def]
    await fold(pool)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        tenant = await tenant_by_id(conn, tenant_id)
        assert tenant is not None
        return await finance_service.statement(conn, config, tenant, period, now=NOW)


async def report(pool: asyncpg.Pool, config: FinanceConfig, period: Period):  # type: ignore[no-untyped-def]
    await fold(pool)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        return await finance_service.reconciliation(conn, config, period, now=NOW)


async def busy_tenant(pool: asyncpg.Pool) -> uuid.UUID:
    """Two months of everything: purchases, grants, usage on two models, refunds, expiry."""
    tenant = await add_tenant(pool, "Busy GmbH", country="DE")
    promo = granted(tenant, 5, expires_at=at("2025-04-10"))
    await record(pool, granted(tenant, 1), at("2025-02-20"))  # before March: opening balance
    await record(pool, purchased(tenant, "cs_1", 100, 11900), at("2025-03-01T00:00"))
    await record(pool, promo, at("2025-03-02"))
    for n in range(30):
        model = "gpt-4o" if n % 3 else "claude-sonnet"
        await record(
            pool,
            used(
                tenant, model, 333_333_333 + n, 111_111_111, at=at("2025-03-03"), provider=model[:3]
            ),
            at(f"2025-03-{3 + n % 20:02d}"),
        )
    await record(pool, refunded(tenant, "re_1", "cs_1", 20, 2380), at("2025-03-25"))
    await record(
        pool,
        BalanceAdjusted(
            tenant_id=tenant,
            adjustment_id=uuid.uuid4(),
            amount_nano=-1 * C,
            reason="duplicate charge",
            actor=Actor(kind="cli"),
        ),
        at("2025-03-26"),
    )
    await record(pool, CreditsExpired(tenant_id=tenant, grant_id=promo.grant_id), at("2025-04-10"))
    await record(pool, used(tenant, "gpt-4o", 7 * C, 2 * C, at=at("2025-04-11")), at("2025-04-11"))
    await record(pool, purchased(tenant, "cs_2", 10, 1190), at("2025-04-30T23:59:59"))
    return tenant


async def test_statement_lines_sum_to_the_change_in_balance_to_the_nano_credit(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await busy_tenant(pool)
    march = await statement(pool, config, tenant, MARCH)

    assert march.status == "provisional"
    assert march.opening_balance_nano == 1 * C
    assert march.opening_balance_nano + statement_lines_sum(march) == march.closing_balance_nano
    assert [line.kind for line in march.money_lines] == [
        "purchase",
        "grant",
        "refund",
        "adjustment",
    ]
    usage = {line.model: line for line in march.usage_lines}
    assert usage["gpt-4o"].requests == 20 and usage["claude-sonnet"].requests == 10
    charged = sum(333_333_333 + n for n in range(30))
    assert (
        sum(line.credits_nano for line in march.usage_lines) == charged == march.totals.usage_nano
    )
    assert usage["gpt-4o"].input_tokens == 20 * 100
    assert usage["gpt-4o"].cached_input_tokens == 20 * 10
    assert usage["gpt-4o"].output_tokens == 20 * 50
    for line in march.usage_lines:
        assert line.margin_nano == line.credits_nano - line.base_cost_nano
    expected_close = 1 * C + 100 * C + 5 * C - charged - 20 * C - 1 * C
    assert march.closing_balance_nano == expected_close
    # Usage took the promotional credits first (6 credits of grants), the rest from paid.
    assert march.totals.usage_promotional_nano == 6 * C
    assert march.totals.usage_paid_nano == charged - 6 * C

    april = await statement(pool, config, tenant, APRIL)
    assert april.opening_balance_nano == march.closing_balance_nano
    assert april.opening_balance_nano + statement_lines_sum(april) == april.closing_balance_nano
    # The grant was used up in March, so its expiry removes nothing.
    assert [(m.kind, m.amount_nano) for m in april.money_lines][:1] == [("expiry", 0)]


async def test_a_period_without_activity_gives_a_valid_empty_statement(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    quiet = await add_tenant(pool, "Quiet")
    empty = await statement(pool, config, quiet, MARCH)
    assert (empty.opening_balance_nano, empty.closing_balance_nano) == (0, 0)
    assert empty.money_lines == [] and empty.usage_lines == []
    with pytest.raises(PeriodNotStarted):
        await statement(pool, config, quiet, Period(2099, 1))


async def test_closing_a_period_stores_final_statements_and_running_it_again_does_nothing(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await busy_tenant(pool)
    provisional = await statement(pool, config, tenant, MARCH)

    with pytest.raises(PeriodNotEnded):
        await finance_service.close_through(pool, config, Period(2025, 6), now=NOW)
    await fold(pool)
    first = await finance_service.close_due_periods(pool, config, now=NOW)
    assert [p.period for p in first.closed] == ["2025-02", "2025-03", "2025-04", "2025-05"]
    assert first.documents_issued == 3
    await fold(pool)
    again = await finance_service.close_due_periods(pool, config, now=NOW)
    assert again.closed == [] and again.documents_issued == 0

    final = await statement(pool, config, tenant, MARCH)
    assert final.status == "final"
    assert msgspec.structs.replace(final, status="provisional") == provisional
    april = await statement(pool, config, tenant, APRIL)
    assert april.opening_balance_nano == final.closing_balance_nano
    with pytest.raises(asyncpg.RaiseError, match="immutable"):
        await pool.execute("UPDATE finance_statements SET closing_balance_nano = 0")
    rows = await pool.fetch("SELECT period, statements FROM finance_periods ORDER BY period")
    assert [(r["period"], r["statements"]) for r in rows][1] == ("2025-03", 1)


async def test_a_late_purchase_in_a_closed_month_is_invoiced_in_the_open_month(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await add_tenant(pool, "Late")
    await record(pool, purchased(tenant, "cs_1", 1, 100), at("2025-03-10"))
    await fold(pool)
    await finance_service.close_through(pool, config, MARCH, now=NOW)
    await record(pool, purchased(tenant, "cs_late", 1, 100), at("2025-03-31T23:59"))
    await issue_all(pool, config, 1)
    rows = await pool.fetch("SELECT source_id, period FROM finance_documents ORDER BY number")
    today = datetime.now(UTC).strftime("%Y-%m")
    assert [(r["source_id"], r["period"]) for r in rows] == [
        ("cs_1", "2025-03"),
        ("cs_late", today),
    ]


async def test_reconciliation_agrees_with_the_log_and_catches_a_changed_history(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await busy_tenant(pool)
    other = await add_tenant(pool, "Metered AG", mode="metered")
    await record(
        pool,
        used(other, "gpt-4o", 5 * C, 4 * C, at=at("2025-03-09"), provider="azure"),
        at("2025-03-09"),
    )
    await issue_all(pool, config, 3)
    await fold(pool)
    await finance_service.close_through(pool, config, APRIL, now=NOW)

    march = await report(pool, config, MARCH)
    assert march.ok, [c for c in march.checks if not c.ok]
    assert march.period_status == "closed"
    totals = march.totals
    by_tenant = {t.tenant_id: t for t in march.by_tenant}
    assert by_tenant[other].unfunded_usage_nano == 5 * C
    assert by_tenant[other].closing.debt_nano == 5 * C
    assert totals.usage_nano == sum(m.credits_nano for m in march.by_model)
    assert totals.base_cost_nano == sum(p.base_cost_nano for p in march.by_provider)
    assert {p.provider for p in march.by_provider} == {"gpt", "cla", "azure"}
    assert totals.margin_nano == totals.usage_nano - totals.base_cost_nano
    assert totals.usage_nano == (
        totals.recognized_revenue_nano + totals.promotional_usage_nano + totals.unfunded_usage_nano
    )
    assert totals.paid_outstanding_nano == by_tenant[tenant].closing.paid_nano
    [eur] = march.invoiced
    assert (eur.currency, eur.invoices, eur.credit_notes) == ("EUR", 1, 1)
    assert eur.gross_minor == 11900 - 2380

    # History changes under a closed period (a usage event slipped in): the check says so.
    await record(pool, used(tenant, "gpt-4o", 1, 1, at=at("2025-03-20")), at("2025-03-20"))
    tampered = await report(pool, config, MARCH)
    assert not tampered.ok
    failed = {c.name for c in tampered.checks if not c.ok}
    assert "closed statements agree with the log" in failed
    assert "opening balances = closing balances of 2025-03" in {
        c.name for c in (await report(pool, config, APRIL)).checks if not c.ok
    }


async def test_statements_from_scratch_equal_statements_chained_from_closed_months(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await busy_tenant(pool)
    from_scratch = await statement(pool, config, tenant, APRIL)
    await fold(pool)
    await finance_service.close_through(pool, config, MARCH, now=NOW)
    chained = await statement(pool, config, tenant, APRIL)
    assert chained == from_scratch
