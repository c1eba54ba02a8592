"""Requests and responses of grants and adjustments."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

import msgspec

MAX_NANO = 10**18


class GrantIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Free credits for a tenant: promotional or manual, optionally expiring."""

    amount_nano: Annotated[int, msgspec.Meta(gt=0, le=MAX_NANO)]
    kind: Literal["promotional", "manual"] = "manual"
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""
    expires_at: datetime | None = None


class AdjustmentIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A correction up (positive) or down (negative); the reason is required."""

    amount_nano: Annotated[int, msgspec.Meta(ge=-MAX_NANO, le=MAX_NANO)]
    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class GrantOut(msgspec.Struct, kw_only=True):
    grant_id: UUID
    tenant_id: UUID
    kind: str
    amount_nano: int
    reason: str
    expires_at: datetime | None
    position: int


class AdjustmentOut(msgspec.Struct, kw_only=True):
    adjustment_id: UUID
    tenant_id: UUID
    amount_nano: int
    reason: str
    position: int
