"""The finance API on the billing service: who sees what, bad input, and every format."""

from __future__ import annotations

import csv
import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import msgspec
import pypdfium2 as pdfium
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from billing.finance.config import FinanceConfig, finance_config
from billing.finance.documents.csv_export import DOCUMENT_COLUMNS, STATEMENT_COLUMNS
from billing.finance.endpoints import finance_router
from tally.auth import Principal, SigningKeys, issue_access_token, new_signing_key_entry
from tally.config import get_settings
from tally.http import create_service_app
from tests.integration.finance.conftest import (
    C,
    add_tenant,
    at,
    fold,
    issue_all,
    purchased,
    record,
    refunded,
    used,
)

KEYS = SigningKeys.parse(new_signing_key_entry("test"))
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


def settings():  # type: ignore[no-untyped-def]
    return msgspec.structs.replace(
        get_settings(),
        tax_rates="DE:19,FR:20",
        issuer_name="Tally Platform GmbH",
        issuer_address="Hauptstraße 1|10115 Berlin",
        issuer_country="DE",
        issuer_tax_id="DE123456789",
        invoice_font_path=str(DEJAVU) if DEJAVU.exists() else "",
    )


@pytest.fixture
async def client() -> AsyncIterator[AsyncTestClient[Litestar]]:
    app = create_service_app("billing", [finance_router], settings=settings())
    app.state.signing_keys = KEYS
    async with AsyncTestClient(app) as client:
        yield client


def bearer(
    roles: tuple[str, ...] = (), tenants: dict[uuid.UUID, str] | None = None
) -> dict[str, str]:
    principal = Principal(
        user_id=uuid.uuid4(),
        email="someone@example.com",
        platform_roles=frozenset(roles),
        tenants=tenants or {},
    )
    return {"authorization": f"Bearer {issue_access_token(KEYS, get_settings(), principal)}"}


FINANCE = bearer(("finance",))


@pytest.fixture
async def two_tenants(pool: asyncpg.Pool) -> tuple[uuid.UUID, uuid.UUID]:
    config = finance_config(settings())
    acme = await add_tenant(pool, 'Acme, "the" Łódź Co.', country="DE")
    beta = await add_tenant(pool, "Beta SAS", country="FR", tax_id="FR12345678901")
    await record(pool, purchased(acme, "cs_a", 100, 11900), at("2025-03-05"))
    await record(pool, purchased(beta, "cs_b", 50, 5000), at("2025-03-06"))
    await record(pool, used(acme, "gpt-4o", 3 * C, 1 * C, at=at("2025-03-07")), at("2025-03-07"))
    await record(pool, refunded(acme, "re_a", "cs_a", 10, 1190), at("2025-03-08"))
    await issue_all(pool, config, 3)
    await fold(pool)
    return acme, beta


async def test_finance_exports_every_tenants_documents_as_rfc4180_csv(
    client: AsyncTestClient[Litestar], two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    response = await client.get("/finance/periods/2025-03/documents?format=csv", headers=FINANCE)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert response.content.count(b"\r\n") == 4  # header + 3 documents, CRLF line ends
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8"), newline="")))
    assert list(rows[0]) == [name for name, _ in DOCUMENT_COLUMNS]
    assert [r["document_number"] for r in rows] == ["INV-000001", "INV-000002", "CN-000001"]
    assert rows[0]["customer_name"] == 'Acme, "the" Łódź Co.'  # quoted and escaped
    assert b'"Acme, ""the"" \xc5\x81\xc3\xb3d\xc5\xba Co."' in response.content
    assert (rows[0]["net"], rows[0]["tax"], rows[0]["gross"]) == ("100.00", "19.00", "119.00")
    assert rows[1]["reverse_charge"] == "true" and rows[1]["tax"] == "0.00"
    assert rows[2]["references_document"] == "INV-000001" and rows[2]["gross"] == "-11.90"


async def test_json_export_follows_the_published_schema(
    client: AsyncTestClient[Litestar], two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    acme, _ = two_tenants
    response = await client.get(
        f"/finance/tenants/{acme}/periods/2025-03/documents?format=json", headers=FINANCE
    )
    assert response.status_code == 200
    body = response.json()
    assert body["period"] == "2025-03" and body["tenant_id"] == str(acme)
    assert [d["document_number"] for d in body["documents"]] == ["INV-000001", "CN-000001"]
    schema = (await client.get("/finance/schemas/document-export")).json()
    assert "DocumentExport" in schema["$defs"]
    assert set(schema["$defs"]["FinanceDocument"]["required"]) <= set(body["documents"][0])
    assert (await client.get("/finance/schemas/nope")).status_code == 400


async def test_a_zip_of_every_pdf_renders_real_invoices(
    client: AsyncTestClient[Litestar],
    two_tenants: tuple[uuid.UUID, uuid.UUID],
    tmp_path: Path,
) -> None:
    response = await client.get("/finance/periods/2025-03/documents?format=zip", headers=FINANCE)
    assert response.status_code == 200
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = archive.namelist()
    assert names == ["2025-03/INV-000001.pdf", "2025-03/INV-000002.pdf", "2025-03/CN-000001.pdf"]
    pdf = pdfium.PdfDocument(archive.read(names[0]))
    page = pdf[0]
    text = page.get_textpage().get_text_range()
    for expected in (
        "Invoice",
        "INV-000001",
        "Issue date",
        "2025-03-05",
        "Tally Platform GmbH",
        "DE123456789",
        "Acme",
        "Net total",
        "100.00 EUR",
        "VAT 19 %",
        "19.00 EUR",
        "119.00 EUR",
    ):
        assert expected in text, expected
    if DEJAVU.exists():
        assert "Łódź" in text  # a Unicode font keeps the name exact
    image = page.render(scale=1.4).to_pil()
    image.save(tmp_path / "invoice.png")
    assert image.size[0] > 800
    credit_note = pdfium.PdfDocument(archive.read(names[2]))[0].get_textpage().get_text_range()
    assert "Credit note" in credit_note and "Corrects invoice" in credit_note
    assert "-11.90 EUR" in credit_note
    reverse = pdfium.PdfDocument(archive.read(names[1]))[0].get_textpage().get_text_range()
    assert "Reverse charge" in reverse


async def test_statements_for_every_tenant_and_one_as_pdf(
    client: AsyncTestClient[Litestar], two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    acme, _ = two_tenants
    response = await client.get("/finance/periods/2025-03/statements?format=csv", headers=FINANCE)
    rows = list(csv.DictReader(io.StringIO(response.content.decode(), newline="")))
    assert list(rows[0]) == [name for name, _ in STATEMENT_COLUMNS]
    for tenant in {r["tenant_id"] for r in rows}:
        mine = [r for r in rows if r["tenant_id"] == tenant]
        opening, *lines, closing = mine
        assert (
            opening["line_type"] == "opening_balance" and closing["line_type"] == "closing_balance"
        )
        assert int(opening["amount_nano"]) + sum(int(r["amount_nano"]) for r in lines) == int(
            closing["amount_nano"]
        )
    statement = await client.get(
        f"/finance/tenants/{acme}/periods/2025-03/statement?format=pdf", headers=FINANCE
    )
    assert statement.headers["content-type"] == "application/pdf"
    text = pdfium.PdfDocument(statement.content)[0].get_textpage().get_text_range()
    assert "Statement" in text and "gpt-4o" in text and "Closing balance" in text
    json_all = await client.get("/finance/periods/2025-03/statements?format=json", headers=FINANCE)
    assert len(json_all.json()["statements"]) == 2
    zipped = await client.get("/finance/periods/2025-03/statements?format=zip", headers=FINANCE)
    assert len(zipfile.ZipFile(io.BytesIO(zipped.content)).namelist()) == 2


async def test_an_open_months_statements_stream_in_chunks_with_the_same_content(
    client: AsyncTestClient[Litestar],
    two_tenants: tuple[uuid.UUID, uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from billing.finance import service

    path = "/finance/periods/2025-03/statements?format=csv"
    whole = (await client.get(path, headers=FINANCE)).content.decode()
    monkeypatch.setattr(service, "STATEMENT_CHUNK", 1)  # one tenant per read
    chunked = (await client.get(path, headers=FINANCE)).content.decode()
    assert chunked == whole
    assert {row["tenant_id"] for row in csv.DictReader(io.StringIO(chunked, newline=""))} == {
        str(tenant) for tenant in two_tenants
    }


async def test_a_tenant_admin_sees_its_own_tenant_only(
    client: AsyncTestClient[Litestar], two_tenants: tuple[uuid.UUID, uuid.UUID], pool: asyncpg.Pool
) -> None:
    acme, beta = two_tenants
    admin = bearer(tenants={acme: "admin"})
    own = await client.get(f"/finance/tenants/{acme}/periods/2025-03/statement", headers=admin)
    assert own.status_code == 200 and own.json()["tenant_id"] == str(acme)
    for path in (
        f"/finance/tenants/{beta}/periods/2025-03/statement",
        f"/finance/tenants/{beta}/periods/2025-03/documents",
    ):
        other = await client.get(path, headers=admin)
        assert other.status_code == 404
        assert other.json()["error"]["code"] == "not_found"
    beta_invoice = await pool.fetchval(
        "SELECT id FROM finance_documents WHERE tenant_id = $1", beta
    )
    assert (
        await client.get(f"/finance/documents/{beta_invoice}", headers=admin)
    ).status_code == 404
    acme_invoice = await pool.fetchval(
        "SELECT id FROM finance_documents WHERE tenant_id = $1 AND kind = 'invoice'", acme
    )
    mine = await client.get(f"/finance/documents/{acme_invoice}?format=pdf", headers=admin)
    assert mine.status_code == 200 and mine.content.startswith(b"%PDF")
    # Whole-period exports and the reconciliation are for finance and operators only.
    for path in (
        "/finance/periods/2025-03/documents",
        "/finance/periods/2025-03/statements",
        "/finance/periods/2025-03/reconciliation",
        "/finance/periods",
    ):
        assert (await client.get(path, headers=admin)).status_code == 403
    member = bearer(tenants={acme: "member"})
    denied = await client.get(f"/finance/tenants/{acme}/periods/2025-03/statement", headers=member)
    assert denied.status_code == 403
    assert (
        await client.get(f"/finance/tenants/{acme}/periods/2025-03/statement")
    ).status_code == 401
    operator = bearer(("operator",))
    seen = await client.get(f"/finance/tenants/{beta}/periods/2025-03/statement", headers=operator)
    assert seen.status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/finance/periods/2025-13/documents", 400, "invalid_period"),
        ("/finance/periods/march/statements", 400, "invalid_period"),
        ("/finance/periods/2099-01/documents", 400, "period_not_started"),
        ("/finance/periods/2099-01/reconciliation", 400, "period_not_started"),
        ("/finance/periods/2025-03/documents?format=xlsx", 400, "invalid_request"),
        (f"/finance/tenants/{uuid.uuid4()}/periods/2025-03/statement", 404, "tenant_not_found"),
        ("/finance/tenants/not-a-uuid/periods/2025-03/statement", 404, "not_found"),
        (f"/finance/documents/{uuid.uuid4()}", 404, "document_not_found"),
    ],
)
async def test_bad_input_gets_a_precise_4xx(
    client: AsyncTestClient[Litestar], path: str, status: int, code: str
) -> None:
    response = await client.get(path, headers=FINANCE)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


async def test_the_period_close_endpoint_is_idempotent_and_refuses_open_months(
    client: AsyncTestClient[Litestar], two_tenants: tuple[uuid.UUID, uuid.UUID]
) -> None:
    first = await client.post("/finance/periods/2025-03/close", headers=FINANCE)
    assert first.status_code == 200
    assert [p["period"] for p in first.json()["closed"]] == ["2025-03"]
    again = await client.post("/finance/periods/2025-03/close", headers=FINANCE)
    assert again.json()["closed"] == []
    future = await client.post("/finance/periods/2099-01/close", headers=FINANCE)
    assert future.status_code == 409 and future.json()["error"]["code"] == "period_not_ended"
    periods = (await client.get("/finance/periods", headers=FINANCE)).json()
    assert [p["period"] for p in periods] == ["2025-03"]
    report = (await client.get("/finance/periods/2025-03/reconciliation", headers=FINANCE)).json()
    assert report["ok"], report["checks"]
    assert report["period_status"] == "closed"


async def test_the_billing_app_mounts_finance(config: FinanceConfig) -> None:
    from billing.app import create_app

    app = create_app()
    schema = app.openapi_schema.to_schema()
    assert "/finance/periods/{period}/documents" in schema["paths"]
    assert app.state.signing_keys is not None
