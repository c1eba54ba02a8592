"""PDF invoices, credit notes and statements, laid out as an accountant expects them (fpdf2).

A4 portrait: logo and title, the issuer and the customer side by side, the document's numbers
and dates, a lines table, totals, then the notes the law asks for (reverse charge, the invoice
a credit note corrects). Output is deterministic: the PDF's creation date is the document's
issue date, so rendering the same document twice gives the same bytes.

Without a configured TrueType font (`TALLY_INVOICE_FONT_PATH`) the built-in Helvetica is used,
which covers Latin-1 only: other characters are transliterated (é stays, ł becomes l, others ?).
The CSV and JSON exports always carry the exact text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import UTC, date, datetime, time

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

from billing.finance.config import FinanceConfig, Party
from billing.finance.schemas import FinanceDocument, Statement
from billing.finance.vat import format_minor
from tally.money import format_credits

_MARGIN = 18.0
_GREY = (90, 90, 90)
_RULE = (200, 200, 200)
_HEAD_FILL = (236, 239, 244)
_FALLBACK_FAMILY = "helvetica"
_FAMILY = "body"


class _Pdf(FPDF):
    def __init__(self, config: FinanceConfig, footer_text: str) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self._footer_text = footer_text
        self.has_unicode_font = config.font_path is not None
        self.body_family = _FALLBACK_FAMILY
        if config.font_path is not None:
            self.add_font(_FAMILY, "", config.font_path)
            self.add_font(_FAMILY, "B", config.font_bold_path or config.font_path)
            self.body_family = _FAMILY
        self.set_margins(_MARGIN, _MARGIN, _MARGIN)
        self.set_auto_page_break(auto=True, margin=22)
        self.alias_nb_pages()

    def text_of(self, text: str) -> str:
        if self.has_unicode_font:
            return text
        # Helvetica is Latin-1: keep what it has, strip accents from the rest, "?" otherwise.
        out = []
        for char in text:
            if ord(char) < 256:
                out.append(char)
                continue
            base = unicodedata.normalize("NFKD", char).encode("latin-1", "ignore").decode("latin-1")
            out.append(base or {"ł": "l", "Ł": "L", "đ": "d", "Đ": "D"}.get(char, "?"))
        return "".join(out)

    def font(self, size: float, bold: bool = False) -> None:
        self.set_font(self.body_family, "B" if bold else "", size)

    def footer(self) -> None:
        self.set_y(-15)
        self.font(7.5)
        self.set_text_color(*_GREY)
        self.cell(
            0,
            5,
            self.text_of(f"{self._footer_text}    Page {self.page_no()}/{{nb}}"),
            align="C",
        )
        self.set_text_color(0, 0, 0)

    def line_text(self, text: str, h: float = 4.6, *, w: float = 0, align: str = "L") -> None:
        self.cell(w, h, self.text_of(text), align=align, new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _party_lines(party: Party) -> list[str]:
    lines = [*party.address_lines]
    if party.country:
        lines.append(party.country)
    if party.tax_id:
        lines.append(f"VAT ID: {party.tax_id}")
    if party.email:
        lines.append(party.email)
    return lines


def _parties(pdf: _Pdf, left: tuple[str, Party], right: tuple[str, Party], y: float) -> None:
    width = (pdf.w - 2 * _MARGIN) / 2
    bottoms = []
    for index, (label, party) in enumerate((left, right)):
        x = _MARGIN + index * (width + 4)
        pdf.set_xy(x, y)
        pdf.font(7.5, bold=True)
        pdf.set_text_color(*_GREY)
        pdf.cell(width, 4.5, label.upper(), new_x=XPos.LEFT, new_y=YPos.NEXT)
        pdf.set_text_color(0, 0, 0)
        pdf.font(10, bold=True)
        pdf.multi_cell(width - 4, 5, pdf.text_of(party.name or "-"), new_x=XPos.LEFT)
        pdf.font(9)
        for line in _party_lines(party):
            pdf.multi_cell(width - 4, 4.4, pdf.text_of(line), new_x=XPos.LEFT)
        bottoms.append(pdf.get_y())
    pdf.set_xy(_MARGIN, max(bottoms) + 6)


def _header(pdf: _Pdf, config: FinanceConfig, title: str, facts: Sequence[tuple[str, str]]) -> None:
    top = pdf.get_y()
    if config.logo_path:
        pdf.image(config.logo_path, x=_MARGIN, y=top, h=16, keep_aspect_ratio=True)
    pdf.set_xy(pdf.w / 2, top)
    pdf.font(20, bold=True)
    pdf.cell(
        pdf.w / 2 - _MARGIN, 9, pdf.text_of(title), align="R", new_x=XPos.LEFT, new_y=YPos.NEXT
    )
    pdf.font(9)
    for label, value in facts:
        pdf.set_x(pdf.w / 2)
        pdf.set_text_color(*_GREY)
        pdf.cell(40, 4.8, pdf.text_of(label), align="R")
        pdf.set_text_color(0, 0, 0)
        pdf.font(9, bold=True)
        pdf.cell(pdf.w / 2 - _MARGIN - 40, 4.8, pdf.text_of(value), align="R")
        pdf.font(9)
        pdf.ln(4.8)
    pdf.set_y(max(pdf.get_y(), top + 18) + 6)
    pdf.set_draw_color(*_RULE)
    pdf.line(_MARGIN, pdf.get_y(), pdf.w - _MARGIN, pdf.get_y())
    pdf.ln(5)


def _table(
    pdf: _Pdf,
    headings: Sequence[str],
    rows: Sequence[Sequence[str]],
    widths: Sequence[float],
    aligns: Sequence[str],
    *,
    size: float = 8.5,
) -> None:
    # Body rows in the regular face; the headings' face comes from headings_style.
    pdf.font(size)
    pdf.set_fill_color(*_HEAD_FILL)
    with pdf.table(
        col_widths=tuple(widths),
        text_align=tuple(aligns),
        line_height=5.2,
        borders_layout="HORIZONTAL_LINES",
        headings_style=FontFace(emphasis="BOLD", fill_color=_HEAD_FILL),
        first_row_as_headings=True,
        padding=(0.8, 1.2),
        width=pdf.w - 2 * _MARGIN,
    ) as table:
        head = table.row()
        for heading in headings:
            head.cell(pdf.text_of(heading))
        for values in rows:
            row = table.row()
            for value in values:
                row.cell(pdf.text_of(value))
    pdf.font(size)


def _totals(pdf: _Pdf, rows: Sequence[tuple[str, str, bool]]) -> None:
    pdf.ln(3)
    label_w, value_w = 45.0, 38.0
    for label, value, strong in rows:
        pdf.set_x(pdf.w - _MARGIN - label_w - value_w)
        pdf.font(10 if strong else 9, bold=strong)
        pdf.cell(label_w, 6 if strong else 5, pdf.text_of(label), align="R")
        pdf.cell(value_w, 6 if strong else 5, pdf.text_of(value), align="R")
        pdf.ln(6 if strong else 5)


def _notes(pdf: _Pdf, notes: Sequence[str]) -> None:
    if not notes:
        return
    pdf.ln(4)
    pdf.font(8.5)
    for note in notes:
        pdf.multi_cell(0, 4.4, pdf.text_of(note), new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def _pdf_date(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _output(pdf: _Pdf) -> bytes:
    return bytes(pdf.output())


def render_document_pdf(doc: FinanceDocument, config: FinanceConfig) -> bytes:
    """One invoice or credit note as a PDF."""
    issuer = doc.issuer
    footer = " | ".join(
        part for part in (issuer.name, f"VAT ID {issuer.tax_id}" if issuer.tax_id else "") if part
    )
    pdf = _Pdf(config, footer or doc.document_number)
    is_invoice = doc.kind == "invoice"
    title = "Invoice" if is_invoice else "Credit note"
    pdf.set_title(f"{title} {doc.document_number}")
    pdf.set_author(issuer.name or "Tally")
    pdf.set_creation_date(_pdf_date(doc.issue_date))
    pdf.add_page()
    facts = [
        ("Number", doc.document_number),
        ("Issue date", doc.issue_date.isoformat()),
        ("Supply date", doc.supply_date.isoformat()),
    ]
    if doc.references is not None:
        facts.append(("Corrects invoice", doc.references.document_number))
    facts.append(("Currency", doc.currency))
    _header(pdf, config, title, facts)
    _parties(
        pdf, ("From", issuer), ("Bill to" if is_invoice else "Credit to", doc.customer), pdf.get_y()
    )

    currency = doc.currency
    _table(
        pdf,
        ("#", "Description", "Credits", "Net", "VAT %", "VAT", "Gross"),
        [
            (
                str(line.line),
                line.description,
                _credits(line.credits_nano),
                format_minor(line.net_minor, currency),
                f"{line.tax_rate_pct:f}",
                format_minor(line.tax_minor, currency),
                format_minor(line.gross_minor, currency),
            )
            for line in doc.lines
        ],
        widths=(7, 62, 22, 22, 14, 20, 24),
        aligns=("LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT"),
    )
    _totals(
        pdf,
        [
            ("Net total", f"{format_minor(doc.net_minor, currency)} {currency}", False),
            (
                f"VAT {doc.tax_rate_pct:f} %",
                f"{format_minor(doc.tax_minor, currency)} {currency}",
                False,
            ),
            (
                "Total" if is_invoice else "Total credited",
                f"{format_minor(doc.gross_minor, currency)} {currency}",
                True,
            ),
        ],
    )
    notes = list(doc.notes)
    if is_invoice:
        notes.append(
            "Paid in full."
            + (f" Payment {doc.payment_reference}." if doc.payment_reference else "")
        )
    _notes(pdf, notes)
    return _output(pdf)


def _credits(nano: int) -> str:
    text = format_credits(nano)
    return text.rstrip("0").rstrip(".") if "." in text else text


def _tokens(count: int) -> str:
    return f"{count:,}"


def render_statement_pdf(statement: Statement, config: FinanceConfig) -> bytes:
    """A tenant's monthly statement as a PDF."""
    pdf = _Pdf(config, f"{config.issuer.name or 'Tally'} | statement {statement.period}")
    pdf.set_title(f"Statement {statement.period} {statement.tenant_name}")
    pdf.set_author(config.issuer.name or "Tally")
    pdf.set_creation_date(statement.ends_at)
    pdf.add_page()
    _header(
        pdf,
        config,
        "Statement",
        [
            ("Period", statement.period),
            ("Status", statement.status),
            ("Time zone", statement.timezone),
        ],
    )
    pdf.font(11, bold=True)
    pdf.line_text(statement.tenant_name, h=6)
    pdf.font(8)
    pdf.set_text_color(*_GREY)
    pdf.line_text(f"Tenant {statement.tenant_id}")
    pdf.set_text_color(0, 0, 0)
    pdf.ln(2)
    pdf.font(9)
    pdf.line_text(
        f"Amounts in credits. Opening balance: {_credits(statement.opening_balance_nano)}"
    )
    pdf.ln(2)
    if statement.money_lines:
        _table(
            pdf,
            ("Date", "Type", "Description", "Reference", "Credits"),
            [
                (
                    line.date.isoformat(),
                    line.kind,
                    line.description,
                    line.reference,
                    _credits(line.amount_nano),
                )
                for line in statement.money_lines
            ],
            widths=(22, 22, 62, 42, 26),
            aligns=("LEFT", "LEFT", "LEFT", "LEFT", "RIGHT"),
        )
        pdf.ln(3)
    if statement.usage_lines:
        _table(
            pdf,
            ("Model", "Requests", "Input", "Cached", "Output", "Base cost", "Margin", "Credits"),
            [
                (
                    line.model,
                    _tokens(line.requests),
                    _tokens(line.input_tokens + line.cache_write_tokens),
                    _tokens(line.cached_input_tokens),
                    _tokens(line.output_tokens + line.reasoning_tokens),
                    _credits(line.base_cost_nano),
                    _credits(line.margin_nano),
                    _credits(-line.credits_nano),
                )
                for line in statement.usage_lines
            ],
            widths=(38, 18, 22, 20, 22, 20, 18, 22),
            aligns=("LEFT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT", "RIGHT"),
            size=8,
        )
    if not statement.money_lines and not statement.usage_lines:
        pdf.line_text("No activity in this period.")
    totals = statement.totals
    _totals(
        pdf,
        [
            ("Opening balance", _credits(statement.opening_balance_nano), False),
            ("Purchases", _credits(totals.purchases_nano), False),
            ("Grants", _credits(totals.grants_nano), False),
            ("Refunds", _credits(-totals.refunds_nano), False),
            ("Expiries", _credits(-totals.expiries_nano), False),
            ("Adjustments", _credits(totals.adjustments_nano), False),
            ("Chargebacks", _credits(-totals.chargebacks_nano), False),
            ("Usage", _credits(-totals.usage_nano), False),
            ("Closing balance", _credits(statement.closing_balance_nano), True),
        ],
    )
    closing = statement.closing
    _notes(
        pdf,
        [
            f"Closing credits: {_credits(closing.paid_nano)} paid, "
            f"{_credits(closing.promotional_nano)} promotional, {_credits(closing.debt_nano)} owed"
            + (
                f", {_credits(closing.frozen_nano)} frozen by disputes"
                if closing.frozen_nano
                else ""
            )
            + "."
        ],
    )
    return _output(pdf)
