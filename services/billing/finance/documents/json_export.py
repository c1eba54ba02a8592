"""JSON exports: the msgspec schemas of billing.finance.schemas, encoded as they are."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from uuid import UUID

import msgspec

from billing.finance.schemas import DocumentExport, FinanceDocument, PeriodStatus, Statement

_encoder = msgspec.json.Encoder()


async def stream_document_export(
    period: str,
    status: PeriodStatus,
    tenant_id: UUID | None,
    documents: AsyncIterable[FinanceDocument],
) -> AsyncIterator[bytes]:
    """A `DocumentExport` object, written one document at a time (valid JSON when joined)."""
    head = _encoder.encode(
        DocumentExport(period=period, period_status=status, tenant_id=tenant_id, documents=[])
    )
    # The encoded export ends with `"documents":[]}`: open the list and stream its items.
    yield head[: -len(b"]}")]
    first = True
    async for doc in documents:
        yield (b"" if first else b",") + _encoder.encode(doc)
        first = False
    yield b"]}"


async def stream_statement_export(
    period: str, status: PeriodStatus, statements: AsyncIterable[Statement]
) -> AsyncIterator[bytes]:
    """A `StatementExport` object, streamed one statement at a time."""
    yield b'{"period":' + _encoder.encode(period) + b',"period_status":'
    yield _encoder.encode(status) + b',"statements":['
    first = True
    async for statement in statements:
        yield (b"" if first else b",") + _encoder.encode(statement)
        first = False
    yield b"]}"
