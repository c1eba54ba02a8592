"""Finance's operator commands: invoice and statement exports, the reconciliation, the close.

    tally invoice export --tenant ID_OR_NAME|--all --period YYYY-MM --format csv|json|pdf
                         [--out PATH]
    tally statement export --tenant ID_OR_NAME|--all --period YYYY-MM --format csv|json|pdf
                           [--out PATH]
    tally finance reconcile --period YYYY-MM [--out PATH]
    tally finance close [--period YYYY-MM]

Exports are written to a temporary file beside `--out` and renamed into place when complete, so
a failed export never leaves a half-written file. `--out -` writes to standard output.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import msgspec

from billing.finance.config import FinanceConfig, finance_config
from billing.finance.documents.archive import zip_of_pdfs
from billing.finance.documents.csv_export import stream_documents_csv, stream_statements_csv
from billing.finance.documents.json_export import stream_document_export, stream_statement_export
from billing.finance.documents.pdf import render_document_pdf, render_statement_pdf
from billing.finance.period import Period, require_started
from billing.finance.repository import TenantRow
from billing.finance.schemas import FinanceDocument, Statement
from billing.finance.service import finance_service
from tally.cli import CommandError, add_json_flag, emit
from tally.db import create_pool
from tally.errors import TallyError
from tally.log import configure_logging
from tally.supervisor import command_settings

T = TypeVar("T")
_EXTENSION = {"csv": "csv", "json": "json", "pdf": "zip"}


def _run(work: Callable[[asyncpg.Pool, FinanceConfig], Awaitable[T]]) -> T:
    settings = command_settings()
    config = finance_config(settings)
    configure_logging(settings)  # log lines go to stderr: stdout is the command's result

    async def main() -> T:
        pool = await create_pool(settings, min_size=1, max_size=2)
        try:
            return await work(pool, config)
        except TallyError as exc:
            raise CommandError(exc.message) from None
        finally:
            await pool.close()

    return asyncio.run(main())


async def _write(out: str, chunks: AsyncIterator[bytes]) -> int:
    """Write the stream to `out` (atomically) or to stdout for `-`; returns bytes written."""
    written = 0
    if out == "-":
        async for chunk in chunks:
            sys.stdout.buffer.write(chunk)
            written += len(chunk)
        sys.stdout.buffer.flush()
        return written
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            async for chunk in chunks:
                handle.write(chunk)
                written += len(chunk)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise
    return written


def _period(text: str, config: FinanceConfig) -> Period:
    period = Period.parse(text)
    require_started(period, config.tz, datetime.now(UTC))
    return period


async def _tenant(pool: asyncpg.Pool, args: argparse.Namespace) -> TenantRow | None:
    if args.all:
        return None
    async with pool.acquire() as conn:
        return await finance_service.resolve_tenant(conn, args.tenant)


class _Counter:
    def __init__(self) -> None:
        self.count = 0

    async def wrap(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        async for item in items:
            self.count += 1
            yield item


def _default_out(kind: str, tenant: TenantRow | None, period: Period, fmt: str) -> str:
    who = str(tenant.id) if tenant else "all"
    return f"{kind}-{who}-{period}.{_EXTENSION[fmt]}"


def _cmd_invoice_export(args: argparse.Namespace) -> int:
    async def work(pool: asyncpg.Pool, config: FinanceConfig) -> dict[str, Any]:
        period = _period(args.period, config)
        tenant = await _tenant(pool, args)
        # Exports are complete up to now: issue any document the worker has not issued yet.
        issued = await finance_service.issue_pending_documents(pool, config)
        out = args.out or _default_out("invoices", tenant, period, args.format)
        counter = _Counter()
        tenant_id = tenant.id if tenant else None
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                status = await finance_service.period_status(conn, period)
                documents = counter.wrap(finance_service.stream_documents(conn, period, tenant_id))
                stream: AsyncIterator[bytes]
                if args.format == "csv":
                    stream = stream_documents_csv(documents)
                elif args.format == "json":
                    stream = stream_document_export(str(period), status, tenant_id, documents)
                else:
                    stream = zip_of_pdfs(documents, _pdf_of_document(config), _document_name)
                written = await _write(out, stream)
        return {
            "path": out,
            "format": args.format,
            "content": "zip" if args.format == "pdf" else args.format,
            "period": str(period),
            "period_status": status,
            "tenant_id": str(tenant_id) if tenant_id else None,
            "tenant_name": tenant.name if tenant else None,
            "documents": counter.count,
            "bytes": written,
            "issued_now": issued,
        }

    result = _run(work)
    _summary(args, result, f"wrote {result['documents']} document(s) to {result['path']}")
    return 0


def _summary(args: argparse.Namespace, result: dict[str, Any], human: str) -> None:
    # With `--out -` stdout carries the export itself; the summary goes to stderr.
    if args.out == "-":
        text = msgspec.json.encode(result).decode() if args.json else human
        print(text, file=sys.stderr)  # noqa: T201
    else:
        emit(args, result, human)


def _pdf_of_document(config: FinanceConfig) -> Callable[[FinanceDocument], bytes]:
    return lambda doc: render_document_pdf(doc, config)


def _document_name(doc: FinanceDocument) -> str:
    return f"{doc.document_number}.pdf"


def _cmd_statement_export(args: argparse.Namespace) -> int:
    async def work(pool: asyncpg.Pool, config: FinanceConfig) -> dict[str, Any]:
        period = _period(args.period, config)
        tenant = await _tenant(pool, args)
        single_pdf = tenant is not None and args.format == "pdf"
        kind = "statement" if tenant else "statements"
        out = args.out or _default_out(kind, tenant, period, args.format)
        if single_pdf and not args.out:
            out = out.removesuffix(".zip") + ".pdf"
        counter = _Counter()
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                status = await finance_service.period_status(conn, period)
                statements: AsyncIterator[Statement]
                if tenant is not None:
                    one = await finance_service.statement(conn, config, tenant, period)
                    statements = counter.wrap(_one(one))
                else:
                    every = finance_service.stream_statements(conn, config, period)
                    statements = counter.wrap(every)
                stream: AsyncIterator[bytes]
                if args.format == "csv":
                    stream = stream_statements_csv(statements)
                elif args.format == "json":
                    stream = stream_statement_export(str(period), status, statements)
                elif single_pdf:
                    stream = _pdf_stream(statements, config)
                else:
                    stream = zip_of_pdfs(
                        statements,
                        lambda s: render_statement_pdf(s, config),
                        lambda s: f"statement-{s.tenant_id}.pdf",
                    )
                written = await _write(out, stream)
        return {
            "path": out,
            "format": args.format,
            "content": "zip" if args.format == "pdf" and not single_pdf else args.format,
            "period": str(period),
            "period_status": status,
            "tenant_id": str(tenant.id) if tenant else None,
            "tenant_name": tenant.name if tenant else None,
            "statements": counter.count,
            "bytes": written,
        }

    result = _run(work)
    _summary(args, result, f"wrote {result['statements']} statement(s) to {result['path']}")
    return 0


async def _one(statement: Statement) -> AsyncIterator[Statement]:
    yield statement


async def _pdf_stream(
    statements: AsyncIterator[Statement], config: FinanceConfig
) -> AsyncIterator[bytes]:
    async for statement in statements:
        yield await asyncio.to_thread(render_statement_pdf, statement, config)


def _cmd_reconcile(args: argparse.Namespace) -> int:
    async def work(pool: asyncpg.Pool, config: FinanceConfig) -> dict[str, Any]:
        period = _period(args.period, config)
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                report = await finance_service.reconciliation(conn, config, period)
        body = msgspec.json.encode(report)
        if args.out:
            await _write(args.out, _bytes(body))
        result: dict[str, Any] = msgspec.to_builtins(report)
        if args.out:
            result["path"] = args.out
        return result

    result = _run(work)
    failed = [check["name"] for check in result["checks"] if not check["ok"]]
    human = f"period {result['period']}: " + (
        "every check passed" if not failed else f"FAILED: {', '.join(failed)}"
    )
    emit(args, result, human)
    return 0 if not failed else 3


async def _bytes(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _cmd_close(args: argparse.Namespace) -> int:
    async def work(pool: asyncpg.Pool, config: FinanceConfig) -> dict[str, Any]:
        if args.period:
            result = await finance_service.close_through(pool, config, Period.parse(args.period))
        else:
            result = await finance_service.close_due_periods(pool, config)
        out: dict[str, Any] = msgspec.to_builtins(result)
        return out

    result = _run(work)
    closed = [item["period"] for item in result["closed"]]
    emit(args, result, f"closed {', '.join(closed)}" if closed else "nothing to close")
    return 0


def _add_export_arguments(parser: argparse.ArgumentParser) -> None:
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant", help="tenant id or name")
    who.add_argument("--all", action="store_true", help="every tenant")
    parser.add_argument("--period", required=True, help="accounting month, YYYY-MM")
    parser.add_argument("--format", required=True, choices=("csv", "json", "pdf"))
    parser.add_argument("--out", help="file to write (default: in the current folder; - stdout)")
    add_json_flag(parser)


def register(commands: Any) -> None:
    """Add `invoice`, `statement` and `finance` to the `tally` command."""
    invoice = commands.add_parser("invoice", help="invoices and credit notes")
    invoice_commands = invoice.add_subparsers(dest="invoice_command", required=True)
    export = invoice_commands.add_parser(
        "export", help="export a period's invoices and credit notes (pdf: a ZIP of PDFs)"
    )
    _add_export_arguments(export)
    export.set_defaults(handler=_cmd_invoice_export)

    statement = commands.add_parser("statement", help="monthly statements")
    statement_commands = statement.add_subparsers(dest="statement_command", required=True)
    export = statement_commands.add_parser(
        "export", help="export a period's statements (pdf of --all: a ZIP of PDFs)"
    )
    _add_export_arguments(export)
    export.set_defaults(handler=_cmd_statement_export)

    finance = commands.add_parser("finance", help="period close and reconciliation")
    finance_commands = finance.add_subparsers(dest="finance_command", required=True)
    reconcile = finance_commands.add_parser(
        "reconcile", help="revenue, costs, liability and checks of a period (exit 3 on failure)"
    )
    reconcile.add_argument("--period", required=True, help="accounting month, YYYY-MM")
    reconcile.add_argument("--out", help="also write the report as JSON to this file")
    add_json_flag(reconcile)
    reconcile.set_defaults(handler=_cmd_reconcile)
    close = finance_commands.add_parser(
        "close", help="close ended periods and issue their statements (idempotent)"
    )
    close.add_argument("--period", help="close through this month (default: every ended one)")
    add_json_flag(close)
    close.set_defaults(handler=_cmd_close)
