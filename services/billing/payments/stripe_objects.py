"""The parts of Stripe's objects that payments reads, as typed structs.

Both webhook payloads and API responses decode into these; unknown fields are ignored, so a
newer Stripe API version adding fields changes nothing. Expandable fields (`latest_charge`,
`payment_intent`) arrive either as an id or, when expanded, as the object: `expandable_id`
takes either.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec


class Metadata(msgspec.Struct, frozen=True):
    """What Tally writes into `metadata` (session and payment intent alike)."""

    tally_order_id: str | None = None
    tenant_id: str | None = None
    pack_id: str | None = None
    credits: str | None = None
    source: str | None = None


class PaymentMethodDetails(msgspec.Struct, frozen=True):
    type: str | None = None


class Charge(msgspec.Struct, frozen=True):
    id: str
    amount: int = 0
    amount_captured: int = 0
    amount_refunded: int = 0
    currency: str = ""
    payment_intent: str | None = None
    refunded: bool = False
    created: int = 0
    payment_method_details: PaymentMethodDetails | None = None


class PaymentError(msgspec.Struct, frozen=True):
    code: str | None = None
    decline_code: str | None = None
    message: str | None = None


class PaymentIntent(msgspec.Struct, frozen=True):
    id: str
    status: str
    amount: int = 0
    amount_received: int = 0
    currency: str = ""
    customer: str | None = None
    payment_method: str | None = None
    created: int = 0
    metadata: Metadata = msgspec.field(default_factory=Metadata)
    # An id, or the Charge when fetched with expand[]=latest_charge.
    latest_charge: str | dict[str, Any] | None = None
    last_payment_error: PaymentError | None = None

    @property
    def latest_charge_id(self) -> str | None:
        return expandable_id(self.latest_charge)

    @property
    def charge(self) -> Charge | None:
        if isinstance(self.latest_charge, dict):
            return msgspec.convert(self.latest_charge, Charge, strict=False)
        return None

    @property
    def payment_method_kind(self) -> str | None:
        """How it was paid ("card", ...), known when the latest charge was expanded."""
        charge = self.charge
        details = charge.payment_method_details if charge else None
        return details.type if details else None


class CheckoutSession(msgspec.Struct, frozen=True):
    id: str
    status: str | None = None
    payment_status: str | None = None
    amount_total: int | None = None
    currency: str | None = None
    customer: str | None = None
    payment_intent: str | dict[str, Any] | None = None
    client_reference_id: str | None = None
    url: str | None = None
    expires_at: int | None = None
    metadata: Metadata = msgspec.field(default_factory=Metadata)

    @property
    def payment_intent_id(self) -> str | None:
        return expandable_id(self.payment_intent)


class Refund(msgspec.Struct, frozen=True):
    id: str
    amount: int
    currency: str
    status: str | None = None
    charge: str | None = None
    payment_intent: str | None = None
    created: int = 0


class Dispute(msgspec.Struct, frozen=True):
    id: str
    amount: int
    currency: str
    status: str
    charge: str | None = None
    payment_intent: str | None = None
    reason: str | None = None


class EventData(msgspec.Struct, frozen=True):
    object: dict[str, Any]


class Event(msgspec.Struct, frozen=True):
    """A Stripe event envelope (`evt_...`) as delivered to the webhook."""

    id: str
    type: str
    data: EventData
    created: int = 0
    livemode: bool = False
    api_version: str | None = None


def expandable_id(value: str | dict[str, Any] | None) -> str | None:
    if isinstance(value, dict):
        found = value.get("id")
        return found if isinstance(found, str) else None
    return value


T = TypeVar("T")


def from_stripe(data: Any, type_: type[T]) -> T:
    """Convert a Stripe object (or its dict) into one of the structs above."""
    if hasattr(data, "to_dict"):
        data = data.to_dict()
    return msgspec.convert(data, type_, strict=False)
