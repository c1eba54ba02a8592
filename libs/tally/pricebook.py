"""Reading the price book: what a model costs a tenant at a given price-book version.

The billing service writes the book (`PriceChanged`, `DefaultMarginChanged`,
`CreditPriceChanged`, `TenantMarginOverridden`, each taking the next version number). The gateway
prices requests with the current version; the fold prices the same facts again with the version
the usage event names and the time it occurred. Both go through `effective_price`, so they use
the same rows and the same pricing code.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

import msgspec

from tally.db import Connection
from tally.pricing import ModelPrice

DEFAULT_MARGIN_PCT = Decimal(0)
DEFAULT_CREDIT_PRICE_USD = Decimal(1)


class EffectivePrice(msgspec.Struct, frozen=True):
    """Everything needed to price one request of `model` for one tenant."""

    price_version: int
    model: str
    price: ModelPrice
    margin_pct: Decimal
    credit_price_usd: Decimal


_CURRENT_VERSION = "SELECT last_value * (is_called)::int FROM price_book_version_seq"

# One statement: the model's sheet in force at (version, time), and the margins and credit price
# in force at that version. A tenant override beats the model's margin, which beats the default.
_EFFECTIVE = """
SELECT mp.price::text AS price,
       mp.margin_pct AS model_margin,
       (SELECT tm.margin_pct FROM tenant_margins tm
         WHERE tm.tenant_id = $1 AND tm.price_version <= $3
         ORDER BY tm.price_version DESC LIMIT 1) AS tenant_margin,
       (SELECT dm.margin_pct FROM default_margins dm
         WHERE dm.price_version <= $3 ORDER BY dm.price_version DESC LIMIT 1) AS default_margin,
       (SELECT cp.credit_price_usd FROM credit_prices cp
         WHERE cp.price_version <= $3 ORDER BY cp.price_version DESC LIMIT 1) AS credit_price
FROM model_prices mp
WHERE mp.model = $2 AND mp.price_version <= $3 AND mp.effective_at <= $4
ORDER BY mp.price_version DESC
LIMIT 1
"""

_price_decoder = msgspec.json.Decoder(ModelPrice)


async def current_price_version(conn: Connection) -> int:
    """The newest price-book version (0 before any price was set)."""
    version: int = await conn.fetchval(_CURRENT_VERSION)
    return version


async def effective_price(
    conn: Connection, *, tenant_id: UUID | None, model: str, version: int, at: datetime
) -> EffectivePrice | None:
    """The price of `model` for `tenant_id` at book `version` and time `at`; None if unpriced."""
    row = await conn.fetchrow(_EFFECTIVE, tenant_id, model, version, at)
    if row is None:
        return None
    margin = next(
        (
            m
            for m in (row["tenant_margin"], row["model_margin"], row["default_margin"])
            if m is not None
        ),
        DEFAULT_MARGIN_PCT,
    )
    return EffectivePrice(
        price_version=version,
        model=model,
        price=_price_decoder.decode(row["price"]),
        margin_pct=margin,
        credit_price_usd=row["credit_price"] or DEFAULT_CREDIT_PRICE_USD,
    )
