"""Requests and responses of the low-balance alert API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec

MAX_NANO = 10**18


class LowBalanceAlertIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Send one webhook when the balance falls below `threshold_nano`."""

    threshold_nano: Annotated[int, msgspec.Meta(ge=0, le=MAX_NANO)]
    url: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)]
    # A new signing secret (returned once); the first configuration always gets one.
    rotate_secret: bool = False


class LowBalanceAlertOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    tenant_id: UUID
    threshold_nano: int
    url: str
    # False after an alert fired, until the balance is back at or above the threshold.
    armed: bool
    created_at: datetime
    updated_at: datetime
    # Only in the answer that created or rotated it: sign-check deliveries with it.
    signing_secret: str | None = None


class NotificationOut(msgspec.Struct, kw_only=True):
    id: UUID
    tenant_id: UUID
    kind: Literal["low_balance", "payment_failed", "auto_topup_failed"]
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    payload: dict[str, Any]


class NotificationPage(msgspec.Struct, kw_only=True):
    data: list[NotificationOut]
    next_cursor: str | None
