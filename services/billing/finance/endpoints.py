"""Finance HTTP API on the billing service: thin handlers over `finance_service`.

Finance and operator roles see every tenant; a tenant admin sees only its own tenant (anyone
else's answers 404, as if it did not exist). Exports stream: a period's CSV or ZIP of every
tenant is never held in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

import asyncpg
from litestar import Response, Router, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from billing.finance.config import FinanceConfig, finance_config
from billing.finance.documents.archive import zip_of_pdfs
from billing.finance.documents.csv_export import stream_documents_csv, stream_statements_csv
from billing.finance.documents.json_export import stream_document_export, stream_statement_export
from billing.finance.documents.pdf import render_document_pdf, render_statement_pdf
from billing.finance.errors import DocumentNotFound, InvalidFormat
from billing.finance.period import Period, require_started
from billing.finance.schemas import (
    SCHEMAS,
    ClosedPeriod,
    CloseResult,
    FinanceDocument,
    ReconciliationReport,
    Statement,
    json_schema,
)
from billing.finance.service import finance_service
from tally.auth import (
    PlatformRole,
    Principal,
    require_platform_role,
)
from tally.db import Connection
from tally.errors import NotFound

ExportFormat = Literal["csv", "json", "zip"]
_MEDIA = {"csv": "text/csv; charset=utf-8", "json": "application/json", "zip": "application/zip"}
_FINANCE_ROLES: tuple[PlatformRole, ...] = ("finance", "operator")


def _config(state: State) -> FinanceConfig:
    return finance_config(state.settings)


def _authorize_tenant(principal: Principal, tenant_id: UUID) -> None:
    """Finance and operators: any tenant. Otherwise only an admin (or owner) of the tenant."""
    if principal.has_platform_role(*_FINANCE_ROLES):
        return
    principal.require_tenant(tenant_id, "admin")


def _period(text: str, config: FinanceConfig) -> Period:
    period = Period.parse(text)
    require_started(period, config.tz, datetime.now(UTC))
    return period


def _attachment(name: str) -> dict[str, str]:
    return {"content-disposition": f'attachment; filename="{name}"'}


async def _in_snapshot(
    pool: asyncpg.Pool, work: Callable[[Connection], AsyncIterator[bytes]]
) -> AsyncIterator[bytes]:
    # A stream reads on its own connection inside one repeatable-read snapshot: every figure
    # of an export comes from the same state of the log, however long the download takes.
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        async for chunk in work(conn):
            yield chunk


def _document_file(doc: FinanceDocument) -> str:
    return f"{doc.period}/{doc.document_number}.pdf"


def _statement_file(statement: Statement) -> str:
    return f"{statement.period}/statement-{statement.tenant_id}.pdf"


def _documents_stream(
    pool: asyncpg.Pool,
    config: FinanceConfig,
    period: Period,
    tenant_id: UUID | None,
    fmt: ExportFormat,
) -> AsyncIterator[bytes]:
    async def work(conn: Connection) -> AsyncIterator[bytes]:
        documents = finance_service.stream_documents(conn, period, tenant_id)
        if fmt == "csv":
            stream = stream_documents_csv(documents)
        elif fmt == "json":
            status = await finance_service.period_status(conn, period)
            stream = stream_document_export(str(period), status, tenant_id, documents)
        else:
            stream = zip_of_pdfs(
                documents, lambda doc: render_document_pdf(doc, config), _document_file
            )
        async for chunk in stream:
            yield chunk

    return _in_snapshot(pool, work)


# --- every tenant (finance and operators) --------------------------------------------------


@get("/periods", guards=[require_platform_role(*_FINANCE_ROLES)])
async def list_closed_periods(state: State) -> list[ClosedPeriod]:
    """The closed periods, oldest first."""
    async with state.pool.acquire() as conn:
        return await finance_service.closed_periods(conn)


@post(
    "/periods/{period:str}/close",
    guards=[require_platform_role(*_FINANCE_ROLES)],
    status_code=200,
)
async def close_period(state: State, period: FromPath[str]) -> CloseResult:
    """Close `period` (and any earlier open one) and issue its statements; idempotent."""
    config = _config(state)
    return await finance_service.close_through(state.pool, config, Period.parse(period))


@get("/periods/{period:str}/documents", guards=[require_platform_role(*_FINANCE_ROLES)])
async def export_period_documents(
    state: State, period: FromPath[str], format: FromQuery[ExportFormat] = "csv"
) -> Stream:
    """Every tenant's invoices and credit notes of the period: CSV, JSON or a ZIP of PDFs."""
    config = _config(state)
    parsed = _period(period, config)
    return Stream(
        _documents_stream(state.pool, config, parsed, None, format),
        media_type=_MEDIA[format],
        headers=_attachment(f"documents-{parsed}.{format}"),
    )


@get("/periods/{period:str}/statements", guards=[require_platform_role(*_FINANCE_ROLES)])
async def export_period_statements(
    state: State, period: FromPath[str], format: FromQuery[ExportFormat] = "csv"
) -> Stream:
    """Every tenant's statement of the period: CSV, JSON or a ZIP of PDFs."""
    config = _config(state)
    parsed = _period(period, config)

    async def work(conn: Connection) -> AsyncIterator[bytes]:
        statements = finance_service.stream_statements(conn, config, parsed)
        if format == "csv":
            stream = stream_statements_csv(statements)
        elif format == "json":
            status = await finance_service.period_status(conn, parsed)
            stream = stream_statement_export(str(parsed), status, statements)
        else:
            stream = zip_of_pdfs(
                statements, lambda s: render_statement_pdf(s, config), _statement_file
            )
        async for chunk in stream:
            yield chunk

    return Stream(
        _in_snapshot(state.pool, work),
        media_type=_MEDIA[format],
        headers=_attachment(f"statements-{parsed}.{format}"),
    )


@get("/periods/{period:str}/reconciliation", guards=[require_platform_role(*_FINANCE_ROLES)])
async def reconciliation(state: State, period: FromPath[str]) -> ReconciliationReport:
    """Revenue by model and tenant, provider costs, margin, liability, and the checks."""
    config = _config(state)
    parsed = _period(period, config)
    async with state.pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            return await finance_service.reconciliation(conn, config, parsed)


# --- one tenant (finance, operators, the tenant's admins) ----------------------------------


@get("/tenants/{tenant_id:uuid}/periods/{period:str}/documents")
async def export_tenant_documents(
    state: State,
    principal: NamedDependency[Principal],
    tenant_id: FromPath[UUID],
    period: FromPath[str],
    format: FromQuery[ExportFormat] = "csv",
) -> Stream:
    """A tenant's invoices and credit notes of the period: CSV, JSON or a ZIP of PDFs."""
    _authorize_tenant(principal, tenant_id)
    config = _config(state)
    parsed = _period(period, config)
    async with state.pool.acquire() as conn:
        await finance_service.tenant(conn, tenant_id)
    return Stream(
        _documents_stream(state.pool, config, parsed, tenant_id, format),
        media_type=_MEDIA[format],
        headers=_attachment(f"documents-{tenant_id}-{parsed}.{format}"),
    )


StatementFormat = Literal["json", "csv", "pdf"]


@get("/tenants/{tenant_id:uuid}/periods/{period:str}/statement")
async def tenant_statement(
    state: State,
    principal: NamedDependency[Principal],
    tenant_id: FromPath[UUID],
    period: FromPath[str],
    format: FromQuery[StatementFormat] = "json",
) -> Response[Any]:
    """A tenant's statement of the period (provisional while the period is open)."""
    _authorize_tenant(principal, tenant_id)
    config = _config(state)
    parsed = _period(period, config)
    async with state.pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            tenant = await finance_service.tenant(conn, tenant_id)
            statement = await finance_service.statement(conn, config, tenant, parsed)
    if format == "json":
        return Response(statement)
    if format == "pdf":
        pdf = await asyncio.to_thread(render_statement_pdf, statement, config)
        return Response(
            pdf,
            media_type="application/pdf",
            headers=_attachment(f"statement-{tenant_id}-{parsed}.pdf"),
        )
    chunks = [chunk async for chunk in stream_statements_csv(_single(statement))]
    return Response(
        b"".join(chunks),
        media_type=_MEDIA["csv"],
        headers=_attachment(f"statement-{tenant_id}-{parsed}.csv"),
    )


async def _single(statement: Statement) -> AsyncIterator[Statement]:
    yield statement


DocumentFormat = Literal["json", "pdf"]


@get("/documents/{document_id:uuid}")
async def get_document(
    state: State,
    principal: NamedDependency[Principal],
    document_id: FromPath[UUID],
    format: FromQuery[DocumentFormat] = "json",
) -> Response[Any]:
    """One invoice or credit note, as JSON or PDF."""
    async with state.pool.acquire() as conn:
        doc = await finance_service.document(conn, document_id)
    try:
        _authorize_tenant(principal, doc.tenant_id)
    except NotFound:
        raise DocumentNotFound("document not found", param="document_id") from None
    if format == "json":
        return Response(doc)
    pdf = await asyncio.to_thread(render_document_pdf, doc, _config(state))
    return Response(
        pdf, media_type="application/pdf", headers=_attachment(f"{doc.document_number}.pdf")
    )


@get("/schemas/{name:str}")
async def get_schema(name: FromPath[str]) -> dict[str, Any]:
    """The JSON Schema of a finance JSON format: document, document-export, statement, ..."""
    if name not in SCHEMAS:
        raise InvalidFormat(
            f"unknown schema {name!r}; one of {', '.join(sorted(SCHEMAS))}", param="name"
        )
    return json_schema(name)


finance_router = Router(
    path="/finance",
    route_handlers=[
        list_closed_periods,
        close_period,
        export_period_documents,
        export_period_statements,
        reconciliation,
        export_tenant_documents,
        tenant_statement,
        get_document,
        get_schema,
    ],
    # `principal` comes from the billing app (one provider per key across all layers).
    tags=["finance"],
)

__all__ = ["finance_router"]
