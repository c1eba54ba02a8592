"""Reading the ledger: one line per balance change, newest first."""

from __future__ import annotations

import base64
from datetime import datetime
from uuid import UUID

from billing.errors import InvalidBillingRequest
from billing.ledger import repository
from billing.ledger.schemas import LEDGER_KINDS, LedgerLine, LedgerPage
from tally.db import Connection

MAX_PAGE = 500


def encode_cursor(position: int) -> str:
    return base64.urlsafe_b64encode(f"l:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, number = raw.partition(":")
        if prefix != "l" or not number.isdigit():
            raise ValueError(raw)
        return int(number)
    except (ValueError, UnicodeDecodeError):
        raise InvalidBillingRequest("cursor is not valid", param="cursor") from None


def parse_kinds(kinds: str | None) -> list[str] | None:
    """`kind=usage,grant` -> ["usage", "grant"]; an unknown kind is a 400."""
    if not kinds:
        return None
    wanted = [k.strip() for k in kinds.split(",") if k.strip()]
    unknown = [k for k in wanted if k not in LEDGER_KINDS]
    if unknown:
        raise InvalidBillingRequest(
            f"unknown ledger kind {unknown[0]!r}; one of {', '.join(LEDGER_KINDS)}", param="kind"
        )
    return wanted or None


class LedgerService:
    async def page(
        self,
        conn: Connection,
        tenant_id: UUID,
        *,
        cursor: str | None,
        limit: int,
        kinds: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> LedgerPage:
        """A page of the tenant's ledger, filtered by kind and time ([since, until))."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidBillingRequest(f"limit must be between 1 and {MAX_PAGE}", param="limit")
        for name, value in (("from", since), ("to", until)):
            if value is not None and value.tzinfo is None:
                raise InvalidBillingRequest(f"{name} needs a timezone", param=name)
        if since and until and since >= until:
            raise InvalidBillingRequest("from must be before to", param="from")
        rows = await repository.page(
            conn,
            tenant_id,
            before_position=decode_cursor(cursor) if cursor else None,
            kinds=parse_kinds(kinds),
            since=since,
            until=until,
            limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        lines = [
            LedgerLine(
                position=r["position"],
                kind=r["kind"],
                amount_nano=r["amount_nano"],
                balance_after_nano=r["balance_after_nano"],
                description=r["description"],
                occurred_at=r["occurred_at"],
                reference=r["reference"],
                key_id=r["key_id"],
                model=r["model"],
                paid_nano=r["paid_nano"],
                promo_nano=r["promo_nano"],
                unfunded_nano=r["unfunded_nano"],
            )
            for r in rows
        ]
        return LedgerPage(
            data=lines, next_cursor=encode_cursor(rows[-1]["position"]) if more else None
        )


ledger_service = LedgerService()
