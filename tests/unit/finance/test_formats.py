"""CSV quoting, formula cells, the documented columns, JSON schemas and the streaming ZIP."""

from __future__ import annotations

import csv
import io
import uuid
import zipfile
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import msgspec

from billing.finance.config import Party
from billing.finance.documents.archive import StreamingZip
from billing.finance.documents.csv_export import (
    DOCUMENT_COLUMNS,
    STATEMENT_COLUMNS,
    CsvChunks,
    document_rows,
)
from billing.finance.schemas import SCHEMAS, DocumentLine, FinanceDocument, json_schema

DOCS = (Path(__file__).resolve().parents[3] / "docs" / "finance.md").read_text()


def document(name: str) -> FinanceDocument:
    return FinanceDocument(
        id=uuid.uuid4(),
        kind="invoice",
        document_number="INV-000001",
        period="2025-03",
        issue_date=date(2025, 3, 1),
        supply_date=date(2025, 3, 1),
        tenant_id=uuid.uuid4(),
        issuer=Party(name="Issuer"),
        customer=Party(name=name, address_lines=["Line 1", "Line 2"]),
        currency="EUR",
        currency_exponent=2,
        lines=[
            DocumentLine(
                line=1,
                description="credits",
                credits_nano=10**9,
                net_minor=-100,
                tax_rate_pct=Decimal("19"),
                tax_minor=-19,
                gross_minor=-119,
            )
        ],
        net_minor=-100,
        tax_minor=-19,
        gross_minor=-119,
        tax_rate_pct=Decimal("19"),
        reverse_charge=False,
        notes=[],
        purchase_id="cs_1",
    )


def test_every_csv_column_is_documented() -> None:
    for name, _ in (*DOCUMENT_COLUMNS, *STATEMENT_COLUMNS):
        assert f"| `{name}` |" in DOCS, name


def test_csv_quotes_what_needs_quoting_and_defuses_formulas() -> None:
    out = CsvChunks(DOCUMENT_COLUMNS)
    out.write(document_rows(document('Comma, "Quote"\nNewline Ltd')))
    out.write(document_rows(document("=HYPERLINK(1)")))
    data = out.take()
    assert data.endswith(b"\r\n")
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert len(rows) == 3
    header = rows[0]
    name = header.index("customer_name")
    assert rows[1][name] == 'Comma, "Quote"\nNewline Ltd'
    assert rows[2][name] == "'=HYPERLINK(1)"
    # Numbers are never touched, negative ones included.
    assert rows[1][header.index("gross")] == "-1.19"
    assert rows[1][header.index("customer_address")] == "Line 1; Line 2"


def test_json_schemas_describe_the_formats() -> None:
    for name in SCHEMAS:
        schema = json_schema(name)
        assert "$defs" in schema or "properties" in schema
    doc = document("A")
    decoded = msgspec.json.decode(msgspec.json.encode(doc), type=FinanceDocument)
    assert decoded == doc


def test_the_streaming_zip_is_a_valid_archive() -> None:
    archive = StreamingZip()
    parts = []
    for n in range(3):
        archive.add(f"doc-{n}.pdf", b"%PDF-" + bytes([n]) * 1000, datetime(2025, 3, 1, tzinfo=UTC))
        parts.append(archive.take())
    parts.append(archive.close())
    assert all(parts[:3])  # each member is handed out as soon as it is added
    with zipfile.ZipFile(io.BytesIO(b"".join(parts))) as read:
        assert read.namelist() == ["doc-0.pdf", "doc-1.pdf", "doc-2.pdf"]
        assert read.read("doc-2.pdf") == b"%PDF-" + b"\x02" * 1000
