"""Requests and responses of the price book."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated

import msgspec

from tally.pricing import ModelPrice

# Model names as providers and routers spell them: "gpt-4o", "anthropic/claude-sonnet-4",
# "accounts/x/models/y", "llama3.1:8b", "claude@2024".
ModelName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/@+-]+$")
]


class PriceIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A model's base prices in USD (per million tokens, per image, per request) and margin."""

    model: ModelName
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    # "SIZE" or "SIZE/QUALITY" -> USD per image, e.g. {"1024x1024/hd": "0.08"}.
    per_image: dict[Annotated[str, msgspec.Meta(min_length=1, max_length=64)], Decimal] = (
        msgspec.field(default_factory=dict)
    )
    per_request: Decimal = Decimal(0)
    # None: the model follows the default margin.
    margin_pct: Decimal | None = None
    # When the prices take effect (timezone required); default now.
    effective_at: datetime | None = None
    # Accept a margin that makes the price fall below base cost (the change is still reported).
    force: bool = False


class DefaultMarginIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    margin_pct: Decimal
    force: bool = False


class CreditPriceIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    credit_price_usd: Decimal


class CatalogEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One model of a catalog file: its prices, and where and when they were published."""

    model: ModelName
    provider: str
    input_per_mtok: Decimal
    output_per_mtok: Decimal
    cached_input_per_mtok: Decimal | None = None
    cache_write_per_mtok: Decimal | None = None
    reasoning_per_mtok: Decimal | None = None
    per_image: dict[str, Decimal] = msgspec.field(default_factory=dict)
    per_request: Decimal = Decimal(0)
    margin_pct: Decimal | None = None
    source: str = ""
    as_of: str = ""
    note: str = ""


class Catalog(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A price catalog file (`catalog/prices.json`)."""

    models: list[CatalogEntry]
    as_of: str = ""
    currency: str = "USD"
    description: str = ""


class CatalogImportIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    catalog: Catalog
    # Applied to entries without a margin of their own; None: they follow the default margin.
    margin_pct: Decimal | None = None
    effective_at: datetime | None = None
    force: bool = False


class PriceChangeOut(msgspec.Struct, kw_only=True):
    """A change the book accepted: its version, and any below-cost findings (when forced)."""

    price_version: int
    model: str | None = None
    price: ModelPrice | None = None
    margin_pct: Decimal | None = None
    effective_at: datetime | None = None
    credit_price_usd: Decimal | None = None
    forced: bool = False
    warnings: list[str] = msgspec.field(default_factory=list)


class ImportOut(msgspec.Struct, kw_only=True):
    imported: list[PriceChangeOut]
    unchanged: list[str]
    warnings: list[str]


class ModelPriceOut(msgspec.Struct, kw_only=True):
    model: str
    price_version: int
    price: ModelPrice
    # The model's own margin (None: the default applies) and the margin that applies.
    margin_pct: Decimal | None
    effective_margin_pct: Decimal
    effective_at: datetime
    below_cost: bool
    # Changes already in the book whose effective time has not come yet.
    scheduled: list[ScheduledPrice] = msgspec.field(default_factory=list)


class ScheduledPrice(msgspec.Struct, kw_only=True):
    price_version: int
    price: ModelPrice
    margin_pct: Decimal | None
    effective_at: datetime


class TenantMarginOut(msgspec.Struct, kw_only=True):
    tenant_id: str
    margin_pct: Decimal
    below_cost: bool


class PriceBookOut(msgspec.Struct, kw_only=True):
    price_version: int
    default_margin_pct: Decimal
    credit_price_usd: Decimal
    models: list[ModelPriceOut]
    tenant_margins: list[TenantMarginOut]
    # Every configuration in force that prices below base cost, in words.
    below_cost: list[str]
