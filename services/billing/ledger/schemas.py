"""Responses of the ledger API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

import msgspec

LedgerKind = Literal[
    "usage",
    "grant",
    "purchase",
    "refund",
    "expiry",
    "adjustment",
    "dispute_frozen",
    "dispute_restored",
    "dispute_lost",
]
LEDGER_KINDS: tuple[str, ...] = LedgerKind.__args__  # type: ignore[attr-defined]


class LedgerLine(msgspec.Struct, kw_only=True):
    """One balance change. `position` is the log position of the event that made it."""

    position: int
    kind: LedgerKind
    amount_nano: int
    balance_after_nano: int
    description: str
    occurred_at: datetime
    reference: str
    key_id: UUID | None
    model: str | None
    # Of a debit: the part paid from purchased credits, from promotional credits, and uncovered.
    paid_nano: int
    promo_nano: int
    unfunded_nano: int


class LedgerPage(msgspec.Struct, kw_only=True):
    data: list[LedgerLine]
    # Pass as `cursor` for the next (older) page; None on the last page.
    next_cursor: str | None
