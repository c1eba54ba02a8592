"""Invoices and credit notes: one per purchase and refund, gap-free numbers, VAT, immutability."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest

from billing.finance import repository
from billing.finance.config import FinanceConfig
from billing.finance.period import Period
from billing.finance.service import finance_service
from tally.money import NANO_PER_CREDIT
from tests.integration.finance.conftest import (
    add_tenant,
    at,
    issue_all,
    purchased,
    record,
    refunded,
)


async def documents(pool: asyncpg.Pool, period: str, tenant=None):  # type: ignore[no-untyped-def]
    async with pool.acquire() as conn, conn.transaction():
        return await finance_service.documents(conn, Period.parse(period), tenant)


async def test_each_purchase_gets_one_invoice_with_vat_taken_out_of_the_amount_paid(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    berlin = await add_tenant(pool, "Berlin Shop", country="DE")
    await record(pool, purchased(berlin, "cs_1", 100, 11900), at("2025-03-05T10:00"))
    await record(pool, purchased(berlin, "cs_2", 10, 1000), at("2025-03-06T10:00"))

    assert await issue_all(pool, config, 2) == 2
    assert await finance_service.issue_pending_documents(pool, config) == 0  # idempotent

    first, second = await documents(pool, "2025-03", berlin)
    assert (first.document_number, second.document_number) == ("INV-000001", "INV-000002")
    assert first.kind == "invoice"
    assert (first.net_minor, first.tax_minor, first.gross_minor) == (10000, 1900, 11900)
    assert (second.net_minor, second.tax_minor) == (840, 160)  # 10.00 / 1.19, half-up
    assert first.tax_rate_pct == 19
    assert not first.reverse_charge
    assert str(first.issue_date) == "2025-03-05" == str(first.supply_date)
    assert first.issuer.name == "Tally Platform GmbH"
    assert first.issuer.tax_id == "DE123456789"
    assert first.customer.name == "Berlin Shop"
    assert first.customer.address_lines == ["Street 1", "1 Town"]
    assert first.lines[0].credits_nano == 100 * NANO_PER_CREDIT
    assert sum(line.gross_minor for line in first.lines) == first.gross_minor
    assert first.payment_reference == "pi_cs_1"


async def test_eu_business_customers_abroad_get_reverse_charge_invoices(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    paris = await add_tenant(pool, "Paris SARL", country="FR", tax_id="FR12345678901")
    lyon = await add_tenant(pool, "Lyon Person", country="FR")
    await record(pool, purchased(paris, "cs_p", 100, 10000), at("2025-03-05"))
    await record(pool, purchased(lyon, "cs_l", 100, 12000), at("2025-03-05"))
    await issue_all(pool, config, 2)

    [b2b] = await documents(pool, "2025-03", paris)
    assert b2b.reverse_charge
    assert (b2b.net_minor, b2b.tax_minor) == (10000, 0)
    assert any("Reverse charge" in note for note in b2b.notes)
    [b2c] = await documents(pool, "2025-03", lyon)
    assert not b2c.reverse_charge
    assert (b2c.tax_rate_pct, b2c.net_minor, b2c.tax_minor) == (20, 10000, 2000)


async def test_credit_notes_reference_their_invoice_and_add_up_to_it_when_fully_refunded(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await add_tenant(pool, "Refunded", country="DE")
    await record(pool, purchased(tenant, "cs_1", 100, 1000), at("2025-03-05"))
    await issue_all(pool, config, 1)
    # Three partial refunds whose separate rounding would not add up: 3.33 + 3.33 + 3.34.
    for index, amount in enumerate((333, 333, 334)):
        await record(pool, refunded(tenant, f"re_{index}", "cs_1", 33, amount), at("2025-04-02"))
    await issue_all(pool, config, 3)

    [invoice] = await documents(pool, "2025-03", tenant)
    notes = await documents(pool, "2025-04", tenant)
    assert [n.document_number for n in notes] == ["CN-000001", "CN-000002", "CN-000003"]
    for note in notes:
        assert note.kind == "credit_note"
        assert note.references is not None
        assert note.references.document_number == invoice.document_number
        assert note.gross_minor < 0 and note.net_minor + note.tax_minor == note.gross_minor
    assert sum(n.net_minor for n in notes) == -invoice.net_minor
    assert sum(n.tax_minor for n in notes) == -invoice.tax_minor


async def test_issued_documents_cannot_be_edited_or_deleted(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await add_tenant(pool, "Immutable")
    await record(pool, purchased(tenant, "cs_1", 1, 100), at("2025-03-05"))
    await issue_all(pool, config, 1)
    with pytest.raises(asyncpg.RaiseError, match="immutable"):
        await pool.execute("UPDATE finance_documents SET gross_minor = 1, net_minor = 1")
    with pytest.raises(asyncpg.RaiseError, match="immutable"):
        await pool.execute("DELETE FROM finance_documents")


async def test_document_numbers_stay_gap_free_under_concurrent_issuers_and_rollbacks(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await add_tenant(pool, "Busy")
    for n in range(60):
        await record(pool, purchased(tenant, f"cs_{n}", 1, 100), at("2025-03-05"))

    async def issuer() -> int:
        return await finance_service.issue_pending_documents(pool, config, batch_size=7)

    async def doomed_taker() -> None:
        # A transaction that takes a number and rolls back must give it back.
        async with pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            await repository.take_document_number(conn, config.issuer_key, "INV")
            await asyncio.sleep(random.random() / 100)
            await tx.rollback()

    results = await asyncio.gather(
        *(issuer() for _ in range(6)), *(doomed_taker() for _ in range(6))
    )
    issued = sum(r for r in results if isinstance(r, int))
    assert issued + await issue_all(pool, config, 60 - issued) == 60
    numbers = [
        row["number"]
        for row in await pool.fetch("SELECT number FROM finance_documents ORDER BY number")
    ]
    assert numbers == list(range(1, 61))
    purchases = await pool.fetch("SELECT d.source_id FROM finance_documents d ORDER BY d.number")
    # Numbers follow the log's order.
    assert [row["source_id"] for row in purchases] == [f"cs_{n}" for n in range(60)]


async def test_a_refund_of_an_unknown_purchase_still_gets_a_credit_note_flagged_by_the_check(
    pool: asyncpg.Pool, config: FinanceConfig
) -> None:
    tenant = await add_tenant(pool, "Orphan")
    await record(pool, refunded(tenant, "re_x", "cs_missing", 1, 100), at("2025-03-05"))
    assert await issue_all(pool, config, 1) == 1
    [note] = await documents(pool, "2025-03", tenant)
    assert note.references is None
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        report = await finance_service.reconciliation(conn, config, Period.parse("2025-03"))
    check = next(c for c in report.checks if c.name.startswith("every purchase"))
    assert not check.ok
    assert "references no invoice" in check.detail
