"""Requests and responses of the payments API (msgspec Structs; unknown fields are refused)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import msgspec

# Prices travel as decimal text ("90.00"), never as JSON numbers: no float ever touches money.
DecimalText = Annotated[
    str, msgspec.Meta(pattern=r"^[0-9]{1,12}(\.[0-9]{1,3})?$", examples=["90.00"])
]
Currency = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z]{3}$", examples=["usd"])]
WholeCredits = Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]


class _Request(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    pass


class CreatePackRequest(_Request, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    credits: WholeCredits
    price: DecimalText
    currency: Currency = "usd"


class CheckoutRequest(_Request, frozen=True):
    """Buy one pack (`pack_id`) or a custom amount (`credits`): exactly one of the two."""

    pack_id: UUID | None = None
    credits: WholeCredits | None = None
    # Save the card for later off-session charges (needed to turn on auto top-up).
    save_payment_method: bool = False


class AutoTopupRequest(_Request, frozen=True):
    """Turn auto top-up on (threshold and pack required) or off."""

    enabled: bool
    threshold_credits: WholeCredits | None = None
    pack_id: UUID | None = None


class ReconciliationRequest(_Request, frozen=True):
    period_start: datetime
    period_end: datetime


class Pack(msgspec.Struct, frozen=True):
    id: UUID
    name: str
    credits: int
    price_minor: int
    currency: str
    price_display: str
    active: bool
    created_at: datetime


class CustomAmount(msgspec.Struct, frozen=True):
    """Custom purchases: whole credits within [min_credits, max_credits], at the credit price."""

    min_credits: int
    max_credits: int
    credit_price_usd: str
    currency: str = "usd"


class PackList(msgspec.Struct, frozen=True):
    data: list[Pack]
    custom: CustomAmount | None


class CheckoutCreated(msgspec.Struct, frozen=True):
    order_id: UUID
    session_id: str
    url: str
    tenant_id: UUID
    credits: int
    amount_nano: int
    price_minor: int
    currency: str
    pack_id: UUID | None
    expires_at: datetime | None


class Order(msgspec.Struct, frozen=True):
    id: UUID
    tenant_id: UUID
    source: str
    status: str
    credits: int
    price_minor: int
    currency: str
    pack_id: UUID | None
    stripe_session_id: str | None
    refunded_minor: int
    created_at: datetime
    credited_at: datetime | None
    failure_message: str | None


class OrderList(msgspec.Struct, frozen=True):
    data: list[Order]


class AutoTopup(msgspec.Struct, frozen=True):
    tenant_id: UUID
    enabled: bool
    threshold_nano: int | None
    pack_id: UUID | None
    disabled_reason: str | None
    payment_method_saved: bool
    max_per_day: int


class Notification(msgspec.Struct, frozen=True):
    id: UUID
    kind: str
    message: str
    data: dict[str, Any]
    created_at: datetime


class NotificationList(msgspec.Struct, frozen=True):
    data: list[Notification]


class WebhookReceived(msgspec.Struct, frozen=True):
    received: bool
    duplicate: bool


class Mismatch(msgspec.Struct, frozen=True):
    kind: str
    detail: str
    tenant_id: UUID | None
    stripe_id: str | None
    purchase_id: str | None
    expected_minor: int | None
    actual_minor: int | None


class ReconciliationRun(msgspec.Struct, frozen=True):
    id: UUID
    period_start: datetime
    period_end: datetime
    status: str
    stripe_payments: int
    stripe_refunds: int
    mismatch_count: int
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    mismatches: list[Mismatch] | None = None


class ReconciliationRunList(msgspec.Struct, frozen=True):
    data: list[ReconciliationRun]
