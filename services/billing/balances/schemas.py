"""Responses of the balance API."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import msgspec


class BalanceOut(msgspec.Struct, kw_only=True):
    """A tenant's balance: what the log says, and what the gateway can still spend now."""

    tenant_id: UUID
    # Every committed event applied (folded, plus the tail the fold has not reached yet).
    balance_nano: int
    # balance - open holds - charges settled at the gateway whose usage is not in the log yet.
    available_nano: int
    holds_nano: int
    in_flight_nano: int
    balance_credits: str
    available_credits: str
    # What the fold has written so far, and how far behind it is.
    folded_balance_nano: int
    folded_events: int
    pending_events: int
    # Redis held a live balance for the tenant (False: holds and in-flight unknown, shown as 0).
    live: bool
    # The conservation terms: balance = granted + purchased + adjusted - refunded - expired
    # - charged - frozen - dispute_lost.
    granted_nano: int
    purchased_nano: int
    adjusted_nano: int
    refunded_nano: int
    expired_nano: int
    charged_nano: int
    frozen_nano: int
    dispute_lost_nano: int
    # Unspent credits by origin, and what no credits covered.
    paid_remaining_nano: int
    promotional_remaining_nano: int
    debt_nano: int
    as_of: datetime
