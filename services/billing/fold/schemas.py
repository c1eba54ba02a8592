"""Responses of the fold's reports: pricing mismatches and live-balance drift."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec


class Mismatch(msgspec.Struct, kw_only=True):
    """A usage event whose recorded charge the fold could not reproduce."""

    position: int
    tenant_id: UUID
    request_id: str
    model: str
    price_version: int
    reason: str
    recorded_charge_nano: int
    recomputed_charge_nano: int | None
    recorded_base_nano: int
    recomputed_base_nano: int | None
    # What the ledger charged (the recomputed amount when there is one).
    charged_nano: int
    occurred_at: datetime


class MismatchPage(msgspec.Struct, kw_only=True):
    data: list[Mismatch]
    next_before: int | None


class Drift(msgspec.Struct, kw_only=True):
    id: int
    tenant_id: UUID
    kind: str
    redis_seq: int | None
    pg_seq: int
    redis_balance_nano: int | None
    pg_balance_nano: int
    detail: dict[str, Any]
    repaired: bool
    detected_at: datetime


class DriftPage(msgspec.Struct, kw_only=True):
    data: list[Drift]
    next_before: int | None
