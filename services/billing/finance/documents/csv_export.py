"""CSV exports (RFC 4180): UTF-8, one header row, CRLF line ends, fields quoted when needed.

The columns are listed here with their meaning; docs/finance.md carries the same table (a test
keeps the two in sync). Money in a currency is a decimal string in major units ("1234.56", "-10.00"
for credit notes); credits are decimal strings with nine places, nano-credits integers.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence

from billing.finance.schemas import FinanceDocument, Statement
from billing.finance.vat import format_minor
from tally.money import format_credits

DOCUMENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("document_number", "Invoice (`INV-…`) or credit note (`CN-…`) number, gap-free per series"),
    ("document_type", "`invoice` or `credit_note`"),
    ("issue_date", "Date the document was issued (YYYY-MM-DD, finance time zone)"),
    ("supply_date", "Date of the sale or refund it covers"),
    ("period", "Accounting month of the issue date (YYYY-MM)"),
    ("tenant_id", "The customer's tenant id"),
    ("customer_name", "Customer's legal name"),
    ("customer_tax_id", "Customer's VAT id (empty for consumers)"),
    ("customer_country", "Customer's country (ISO 3166-1 alpha-2)"),
    ("customer_address", "Customer's address, lines joined by `; `"),
    ("customer_email", "Customer's billing e-mail"),
    ("issuer_name", "Platform's legal name"),
    ("issuer_tax_id", "Platform's VAT id"),
    ("issuer_country", "Platform's country"),
    ("references_document", "For a credit note: the number of the invoice it corrects"),
    ("purchase_id", "The purchase (payment) the document belongs to"),
    ("refund_id", "For a credit note: the refund it records"),
    ("line", "Line number within the document"),
    ("description", "What was sold or refunded"),
    ("credits", "Credits bought (negative: taken back), nine decimals"),
    ("currency", "ISO 4217 currency of the amounts"),
    ("net", "Net amount of the line"),
    ("tax_rate_pct", "VAT rate in percent"),
    ("tax", "VAT amount of the line"),
    ("gross", "Net + VAT: what was paid (or refunded, negative)"),
    ("reverse_charge", "`true` when the customer accounts for the VAT (EU B2B)"),
    ("notes", "Wording the document carries (reverse charge, corrected invoice)"),
)

STATEMENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("period", "Statement month (YYYY-MM)"),
    ("tenant_id", "Tenant id"),
    ("tenant_name", "Tenant name"),
    ("status", "`final` (period closed) or `provisional` (period still open)"),
    (
        "line_type",
        "`opening_balance`, `purchase`, `grant`, `refund`, `expiry`, `adjustment`,"
        " `chargeback`, `dispute_frozen`, `dispute_restored`, `usage` or `closing_balance`",
    ),
    ("date", "Date of the event (money lines) or the period's first/last day"),
    ("reference", "Purchase, grant, refund, adjustment or dispute id"),
    ("description", "What happened"),
    ("model", "Usage lines: the model"),
    ("requests", "Usage lines: number of requests"),
    ("input_tokens", "Usage lines: uncached input tokens"),
    ("cached_input_tokens", "Usage lines: input tokens read from the provider's cache"),
    ("cache_write_tokens", "Usage lines: input tokens written to the provider's cache"),
    ("output_tokens", "Usage lines: output tokens (without reasoning)"),
    ("reasoning_tokens", "Usage lines: reasoning tokens"),
    ("images", "Usage lines: images generated"),
    ("base_cost_credits", "Usage lines: the providers' cost, in credits"),
    ("margin_credits", "Usage lines: the platform's margin, in credits"),
    (
        "amount_credits",
        "Change in balance (usage: minus the credits charged); balance lines: the balance",
    ),
    ("amount_nano", "`amount_credits` in nano-credits (exact integer)"),
)

# A cell a spreadsheet would run as a formula is prefixed with an apostrophe (OWASP's advice);
# only free-text columns are touched, never numbers (a negative amount starts with "-").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _text(value: str | None) -> str:
    if not value:
        return ""
    return "'" + value if value.startswith(_FORMULA_START) else value


def _credits(nano: int) -> str:
    return format_credits(nano)


class CsvChunks:
    """Rows in, UTF-8 bytes out, in chunks: nothing bigger than one chunk is held."""

    def __init__(self, columns: Sequence[tuple[str, str]]) -> None:
        self._buffer = io.StringIO()
        self._writer = csv.writer(self._buffer, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
        self._writer.writerow([name for name, _ in columns])

    def write(self, rows: Iterable[Sequence[object]]) -> None:
        self._writer.writerows(rows)

    def take(self) -> bytes:
        data = self._buffer.getvalue().encode("utf-8")
        self._buffer.seek(0)
        self._buffer.truncate()
        return data


def document_rows(doc: FinanceDocument) -> list[list[object]]:
    """The CSV rows of one document: one per line."""
    currency = doc.currency
    return [
        [
            doc.document_number,
            doc.kind,
            doc.issue_date.isoformat(),
            doc.supply_date.isoformat(),
            doc.period,
            str(doc.tenant_id),
            _text(doc.customer.name),
            _text(doc.customer.tax_id),
            doc.customer.country or "",
            _text("; ".join(doc.customer.address_lines)),
            _text(doc.customer.email),
            _text(doc.issuer.name),
            _text(doc.issuer.tax_id),
            doc.issuer.country or "",
            doc.references.document_number if doc.references else "",
            _text(doc.purchase_id),
            _text(doc.refund_id),
            line.line,
            _text(line.description),
            _credits(line.credits_nano),
            currency,
            format_minor(line.net_minor, currency),
            f"{line.tax_rate_pct:f}",
            format_minor(line.tax_minor, currency),
            format_minor(line.gross_minor, currency),
            "true" if doc.reverse_charge else "false",
            _text(" ".join(doc.notes)),
        ]
        for line in doc.lines
    ]


def statement_rows(statement: Statement) -> list[list[object]]:
    """The CSV rows of one statement: opening, money lines, usage by model, closing."""
    head = [statement.period, str(statement.tenant_id), _text(statement.tenant_name)]
    status = statement.status
    empty_usage = [""] * 10
    first_day = statement.starts_at.date().isoformat()
    rows: list[list[object]] = [
        [
            *head,
            status,
            "opening_balance",
            first_day,
            "",
            "Opening balance",
            *empty_usage,
            _credits(statement.opening_balance_nano),
            statement.opening_balance_nano,
        ]
    ]
    for money in statement.money_lines:
        rows.append(
            [
                *head,
                status,
                money.kind,
                money.date.isoformat(),
                _text(money.reference),
                _text(money.description),
                *empty_usage,
                _credits(money.amount_nano),
                money.amount_nano,
            ]
        )
    for usage in statement.usage_lines:
        rows.append(
            [
                *head,
                status,
                "usage",
                first_day,
                "",
                f"Usage of {usage.model}",
                _text(usage.model),
                usage.requests,
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.cache_write_tokens,
                usage.output_tokens,
                usage.reasoning_tokens,
                usage.images,
                _credits(usage.base_cost_nano),
                _credits(usage.margin_nano),
                _credits(-usage.credits_nano),
                -usage.credits_nano,
            ]
        )
    rows.append(
        [
            *head,
            status,
            "closing_balance",
            statement.ends_at.date().isoformat(),
            "",
            "Closing balance",
            *empty_usage,
            _credits(statement.closing_balance_nano),
            statement.closing_balance_nano,
        ]
    )
    return rows


async def stream_documents_csv(
    documents: AsyncIterable[FinanceDocument], *, chunk_rows: int = 500
) -> AsyncIterator[bytes]:
    """The documents CSV, yielded in chunks of about `chunk_rows` rows."""
    out = CsvChunks(DOCUMENT_COLUMNS)
    pending = 0
    async for doc in documents:
        rows = document_rows(doc)
        out.write(rows)
        pending += len(rows)
        if pending >= chunk_rows:
            yield out.take()
            pending = 0
    yield out.take()


async def stream_statements_csv(
    statements: AsyncIterable[Statement], *, chunk_rows: int = 500
) -> AsyncIterator[bytes]:
    """The statements CSV (any number of tenants), yielded in chunks."""
    out = CsvChunks(STATEMENT_COLUMNS)
    pending = 0
    async for statement in statements:
        rows = statement_rows(statement)
        out.write(rows)
        pending += len(rows)
        if pending >= chunk_rows:
            yield out.take()
            pending = 0
    yield out.take()
