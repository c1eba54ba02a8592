"""Requests and responses of the tenant routes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

from tenant.fields import (
    CountryCode,
    CreditsText,
    Email,
    Name,
    NonNegativeNano,
    Reason,
    ShortText,
)

TenantMode = Literal["prepaid", "metered"]
TenantStatus = Literal["active", "suspended"]
PostalCode = Annotated[str, msgspec.Meta(max_length=32, pattern=r"^[^\x00-\x1f\x7f]*$")]
RateLimit = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
TaxId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]


class Address(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A postal address for invoices; the country is the tenant's `country`."""

    line1: ShortText | None = None
    line2: ShortText | None = None
    city: ShortText | None = None
    region: ShortText | None = None
    postal_code: PostalCode | None = None


class TenantCreate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: Name
    mode: TenantMode = "prepaid"
    billing_email: Email | None = None
    tax_id: TaxId | None = None
    address: Address | None = None
    country: CountryCode | None = None
    budget_cap_nano: NonNegativeNano | None = None
    # Tenant-wide limits the gateway enforces beside each key's own (null: its defaults).
    rpm_limit: RateLimit | None = None
    tpm_limit: RateLimit | None = None
    # Credits granted at once (a `manual` grant), on top of any starter credits.
    credits: CreditsText | None = None


class TenantUpdate(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Only the fields present change; `null` clears an optional field.

    Tenant owners and admins may change the billing profile (billing_email, tax_id, address,
    country); name, mode, margin override, budget cap and rate limits are for operators.
    """

    name: Name | UnsetType = UNSET
    billing_email: Email | UnsetType | None = UNSET
    tax_id: TaxId | UnsetType | None = UNSET
    address: Address | UnsetType | None = UNSET
    country: CountryCode | UnsetType | None = UNSET
    mode: TenantMode | UnsetType = UNSET
    # Percent added to base cost for this tenant instead of the model or default margin.
    margin_override_pct: Decimal | UnsetType | None = UNSET
    budget_cap_nano: NonNegativeNano | UnsetType | None = UNSET
    rpm_limit: RateLimit | UnsetType | None = UNSET
    tpm_limit: RateLimit | UnsetType | None = UNSET


class TenantSuspend(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: Reason = "suspended by an operator"


class Tenant(msgspec.Struct, frozen=True):
    id: UUID
    name: str
    mode: TenantMode
    status: TenantStatus
    billing_email: str | None
    tax_id: str | None
    address: Address | None
    country: str | None
    margin_override_pct: Decimal | None
    budget_cap_nano: int | None
    rpm_limit: int | None
    tpm_limit: int | None
    suspended_reason: str | None
    suspended_at: datetime | None
    created_at: datetime
    updated_at: datetime


class TenantPage(msgspec.Struct, frozen=True):
    data: list[Tenant]
    # Pass as `cursor` to get the next page; null on the last page.
    next_cursor: str | None


class TenantQuery(msgspec.Struct, frozen=True):
    search: str | None = None
    status: TenantStatus | None = None
    mode: TenantMode | None = None
    limit: int = 50
    cursor: str | None = None
