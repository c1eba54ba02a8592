"""Money events: prices, grants, purchases, refunds, disputes, expiries, adjustments, usage.

Amounts are integer nano-credits. The fold derives every balance, ledger line and rollup from
these; replaying them reproduces each exactly (design invariant 2).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Literal
from uuid import UUID

from tally.eventlog import Event
from tally.events.tenant import Actor
from tally.pricing import ModelPrice, TokenUsage

GrantKind = Literal["starter", "promotional", "manual"]


class PriceChanged(Event, frozen=True):
    """A model's base prices or margin changed, creating price-book version `price_version`.

    Versions are one global sequence shared with default-margin and tenant-margin changes, so a
    usage event naming version N is priced with everything in force at N.
    """

    price_version: int
    model: str
    price: ModelPrice
    margin_pct: Decimal | None
    effective_at: datetime
    actor: Actor
    # The operator forced a change the book found below base cost (reported, not refused).
    forced_below_cost: bool = False


class DefaultMarginChanged(Event, frozen=True):
    """The global default margin changed (a new price-book version)."""

    price_version: int
    margin_pct: Decimal
    actor: Actor
    forced_below_cost: bool = False


class CreditPriceChanged(Event, frozen=True):
    """The USD price of one credit changed (a new price-book version)."""

    price_version: int
    credit_price_usd: Decimal
    actor: Actor


class CreditsGranted(Event, frozen=True):
    """Free credits were granted (starter, promotional or manual), optionally expiring."""

    tenant_id: UUID
    grant_id: UUID
    amount_nano: int
    kind: GrantKind
    reason: str
    actor: Actor
    expires_at: datetime | None = None


class CreditsExpired(Event, frozen=True):
    """A grant reached its expiry: the fold removes whatever of it is still unused."""

    tenant_id: UUID
    grant_id: UUID


class BalanceAdjusted(Event, frozen=True):
    """An operator corrected a balance up or down, with a reason."""

    tenant_id: UUID
    adjustment_id: UUID
    amount_nano: int
    reason: str
    actor: Actor


class CreditsPurchased(Event, frozen=True):
    """A payment succeeded and bought credits (once per Checkout Session or PaymentIntent)."""

    tenant_id: UUID
    purchase_id: str
    amount_nano: int
    paid_minor: int
    currency: str
    source: Literal["checkout", "auto_topup", "manual"]
    stripe_payment_intent: str | None = None
    pack_id: str | None = None
    stripe_checkout_session: str | None = None
    # How the customer paid ("card", "sepa_debit", ...), for the ledger's wording.
    payment_method_kind: str | None = None


class CreditsRefunded(Event, frozen=True):
    """Part or all of a purchase was refunded; its credits are taken back."""

    tenant_id: UUID
    refund_id: str
    purchase_id: str
    amount_nano: int
    refunded_minor: int
    currency: str
    stripe_charge: str | None = None


class CreditsFrozen(Event, frozen=True):
    """A dispute opened: the disputed credits are held back until it closes."""

    tenant_id: UUID
    dispute_id: str
    purchase_id: str
    amount_nano: int
    disputed_minor: int | None = None
    currency: str | None = None


class CreditsUnfrozen(Event, frozen=True):
    """A dispute closed: `outcome` won restores the frozen credits, lost removes them."""

    tenant_id: UUID
    dispute_id: str
    outcome: Literal["won", "lost"]
    # Same as the matching CreditsFrozen; repeated so a reader needs no lookup.
    purchase_id: str | None = None
    amount_nano: int | None = None


class UsageRecorded(Event, frozen=True):
    """One request through the gateway: its facts, and the charge the gateway computed.

    The fold prices `usage` again with `price_version` and compares with `charge_nano`.
    """

    request_id: str
    tenant_id: UUID
    key_id: UUID
    model: str
    endpoint: str
    usage: TokenUsage
    price_version: int
    charge_nano: int
    base_nano: int
    status: Literal["ok", "error", "client_disconnected"]
    latency_ms: int
    occurred_at: datetime
    provider: str | None = None
    credential_id: UUID | None = None
    route_id: UUID | None = None
    upstream_model: str | None = None
    ttft_ms: int | None = None
    estimated: bool = False


# --- payments (Stripe): appended here to keep merges with the billing core easy ---


class PaymentFailed(Event, frozen=True):
    """A payment for credits failed (a delayed checkout payment or an auto top-up).

    Nothing was credited; the tenant is notified.
    """

    tenant_id: UUID
    purchase_id: str
    source: Literal["checkout", "auto_topup"]
    amount_minor: int
    currency: str
    reason: str
    code: str | None = None
    stripe_payment_intent: str | None = None


class AutoTopupConfigured(Event, frozen=True):
    """A tenant turned auto top-up on or off, or changed its threshold or pack."""

    tenant_id: UUID
    enabled: bool
    threshold_nano: int
    pack_id: str | None
    actor: Actor


class AutoTopupDisabled(Event, frozen=True):
    """Auto top-up switched itself off after a failed charge; the tenant must opt in again."""

    tenant_id: UUID
    reason: str
    purchase_id: str | None = None


class CreditPackCreated(Event, frozen=True):
    """An operator offered a credit pack: `credits` for `price_minor` of `currency`."""

    pack_id: str
    name: str
    credits: int
    price_minor: int
    currency: str
    actor: Actor


class CreditPackArchived(Event, frozen=True):
    """An operator withdrew a credit pack; past purchases of it are unaffected."""

    pack_id: str
    actor: Actor
