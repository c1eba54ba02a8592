"""Reading the price book: what a model costs a tenant at a given price-book version.

The billing service writes the book (`PriceChanged`, `DefaultMarginChanged`,
`CreditPriceChanged`, `TenantMarginOverridden`, each taking the next version number). The gateway
prices requests with the current version; the fold prices the same facts again with the version
the usage event names and the time it occurred. Both go through `effective_price`, so they use
the same rows and the same pricing code.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, datetime
from decimal import Decimal
from operator import itemgetter
from typing import TypeVar
from uuid import UUID

import msgspec

from tally.db import Connection
from tally.pricing import ModelPrice
from tally.tariff import Tariff

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
_START_OF_TIME = datetime.min.replace(tzinfo=UTC)
_END_OF_TIME = datetime.max.replace(tzinfo=UTC)
_T = TypeVar("_T")


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


# --- Writing: version numbers that commit in order ---------------------------------------------
# Versions come from a sequence, so two concurrent writers could commit version 6 before 5: a
# request priced at 6 without 5's change would be priced differently when the fold repeats it
# later (with 5 in force). Every writer takes this lock before `nextval`, so versions commit in
# the order they are numbered and "the book at version N" never changes once N is visible.
_VERSION_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('tally:price_book', 0))"
_NEXT_VERSION = "SELECT nextval('price_book_version_seq')"


async def allocate_price_version(conn: Connection) -> int:
    """The next price-book version, inside the caller's transaction (which must commit it).

    Every writer of `model_prices`, `default_margins`, `credit_prices` or `tenant_margins` calls
    this for its version number.
    """
    await conn.execute(_VERSION_LOCK)
    version: int = await conn.fetchval(_NEXT_VERSION)
    return version


# --- Reading many: the whole book in memory ----------------------------------------------------
# The fold prices every usage event again; one query per event would bound it at a few thousand
# events per second. The book is small, so the fold holds all of it and answers exactly what
# `effective_price` answers (a property test checks the two agree).

_LOAD_MODEL_PRICES = (
    "SELECT model, price_version, price::text AS price, margin_pct, effective_at FROM model_prices"
)
_LOAD_DEFAULT_MARGINS = "SELECT price_version, margin_pct FROM default_margins"
_LOAD_CREDIT_PRICES = "SELECT price_version, credit_price_usd FROM credit_prices"
_LOAD_TENANT_MARGINS = "SELECT tenant_id, price_version, margin_pct FROM tenant_margins"
# Changes whenever a row is added to any of the four tables.
_FINGERPRINT = """
SELECT (SELECT count(*) FROM model_prices), (SELECT count(*) FROM default_margins),
       (SELECT count(*) FROM credit_prices), (SELECT count(*) FROM tenant_margins)
"""


def _latest_at_or_below(rows: list[tuple[int, _T]], version: int) -> tuple[int, _T] | None:
    # rows are sorted by version; the last one at or below `version`.
    index = bisect_right(rows, version, key=itemgetter(0))
    return rows[index - 1] if index else None


class PriceBookSnapshot:
    """Every row of the price book, answering `effective_price` without a query."""

    def __init__(
        self,
        *,
        model_prices: list[tuple[str, int, ModelPrice, Decimal | None, datetime]],
        default_margins: list[tuple[int, Decimal]],
        credit_prices: list[tuple[int, Decimal]],
        tenant_margins: list[tuple[UUID, int, Decimal | None]],
        fingerprint: tuple[int, ...] = (),
    ) -> None:
        self.fingerprint = fingerprint
        self._models: dict[str, list[tuple[int, tuple[ModelPrice, Decimal | None, datetime]]]] = {}
        for model, version, price, margin, effective_at in model_prices:
            self._models.setdefault(model, []).append((version, (price, margin, effective_at)))
        for rows in self._models.values():
            rows.sort(key=itemgetter(0))
        self._default = sorted(default_margins, key=itemgetter(0))
        self._credit = sorted(credit_prices, key=itemgetter(0))
        self._tenants: dict[UUID, list[tuple[int, Decimal | None]]] = {}
        for tenant_id, version, tenant_margin in tenant_margins:
            self._tenants.setdefault(tenant_id, []).append((version, tenant_margin))
        for tenant_rows in self._tenants.values():
            tenant_rows.sort(key=itemgetter(0))
        # (tenant, model, version) -> (rows at or below version, margins, credit price): the
        # part that does not depend on the time; then (…, row index) -> the EffectivePrice,
        # prepared as a Tariff once (the fold prices every usage event with it).
        self._context: dict[
            tuple[UUID | None, str, int], tuple[int, Decimal | None, Decimal | None, Decimal]
        ] = {}
        self._tariffs: dict[tuple[UUID | None, str, int, int], Tariff] = {}
        # (tenant, model, version) -> [from, until) and the answer throughout it.
        self._spans: dict[
            tuple[UUID | None, str, int], tuple[datetime, datetime, Tariff | None]
        ] = {}

    @classmethod
    async def load(cls, conn: Connection) -> PriceBookSnapshot:
        """Read the whole book (in the caller's transaction, if any)."""
        fingerprint = await cls.current_fingerprint(conn)
        return cls(
            model_prices=[
                (
                    r["model"],
                    r["price_version"],
                    _price_decoder.decode(r["price"]),
                    r["margin_pct"],
                    r["effective_at"],
                )
                for r in await conn.fetch(_LOAD_MODEL_PRICES)
            ],
            default_margins=[tuple(r) for r in await conn.fetch(_LOAD_DEFAULT_MARGINS)],
            credit_prices=[tuple(r) for r in await conn.fetch(_LOAD_CREDIT_PRICES)],
            tenant_margins=[tuple(r) for r in await conn.fetch(_LOAD_TENANT_MARGINS)],
            fingerprint=fingerprint,
        )

    @staticmethod
    async def current_fingerprint(conn: Connection) -> tuple[int, ...]:
        """Cheap check whether a loaded snapshot is still the whole book."""
        row = await conn.fetchrow(_FINGERPRINT)
        assert row is not None
        return tuple(row)

    def effective_price(
        self, *, tenant_id: UUID | None, model: str, version: int, at: datetime
    ) -> EffectivePrice | None:
        """Exactly `tally.pricebook.effective_price`, from memory."""
        tariff = self.tariff(tenant_id=tenant_id, model=model, version=version, at=at)
        return tariff.price if tariff is not None else None

    def tariff(
        self, *, tenant_id: UUID | None, model: str, version: int, at: datetime
    ) -> Tariff | None:
        """The `effective_price` answer as a `Tariff`, prepared once per price."""
        if tenant_id is not None and tenant_id not in self._tenants:
            tenant_id = None  # no margin of its own: priced like every such tenant
        key = (tenant_id, model, version)
        # The fold asks for the same (tenant, model, version) at ever later times: the answer
        # holds for a span of time, so most lookups are one dict hit and two comparisons.
        span = self._spans.get(key)
        if span is not None and span[0] <= at < span[1]:
            return span[2]
        rows = self._models.get(model)
        if not rows:
            return None
        context = self._context.get(key)
        if context is None:
            context = self._context[key] = self._context_of(tenant_id, rows, version)
        bound, tenant_margin, default_margin, credit_price = context
        # The newest version at or below `version` that is already in effect at `at`; the
        # answer stays the same until a newer one of those rows takes effect.
        index = bound
        until = _END_OF_TIME
        while index:
            index -= 1
            effective_at = rows[index][1][2]
            if effective_at <= at:
                break
            until = min(until, effective_at)
        else:
            self._spans[key] = (_START_OF_TIME, until, None)
            return None
        tariff = self._tariffs.get((tenant_id, model, version, index))
        if tariff is None:
            price, model_margin, _ = rows[index][1]
            margin = next(
                (m for m in (tenant_margin, model_margin, default_margin) if m is not None),
                DEFAULT_MARGIN_PCT,
            )
            tariff = self._tariffs[(tenant_id, model, version, index)] = Tariff(
                EffectivePrice(
                    price_version=version,
                    model=model,
                    price=price,
                    margin_pct=margin,
                    credit_price_usd=credit_price,
                )
            )
        self._spans[key] = (rows[index][1][2], until, tariff)
        return tariff

    def _context_of(
        self,
        tenant_id: UUID | None,
        rows: list[tuple[int, tuple[ModelPrice, Decimal | None, datetime]]],
        version: int,
    ) -> tuple[int, Decimal | None, Decimal | None, Decimal]:
        tenant_margin: Decimal | None = None
        if tenant_id is not None and tenant_id in self._tenants:
            tenant_row = _latest_at_or_below(self._tenants[tenant_id], version)
            tenant_margin = tenant_row[1] if tenant_row else None
        default_row = _latest_at_or_below(self._default, version)
        credit_row = _latest_at_or_below(self._credit, version)
        return (
            bisect_right(rows, version, key=itemgetter(0)),
            tenant_margin,
            default_row[1] if default_row else None,
            (credit_row[1] if credit_row else None) or DEFAULT_CREDIT_PRICE_USD,
        )

    def model_row(
        self, model: str, version: int, at: datetime
    ) -> tuple[int, ModelPrice, Decimal | None, datetime] | None:
        """(version, price, own margin, effective_at) of the model's row in force, if any."""
        rows = self._models.get(model, [])
        index = bisect_right(rows, version, key=itemgetter(0))
        while index:
            index -= 1
            row_version, (price, margin, effective_at) = rows[index]
            if effective_at <= at:
                return row_version, price, margin, effective_at
        return None

    def default_margin(self, version: int) -> Decimal:
        """The default margin in force at `version`."""
        row = _latest_at_or_below(self._default, version)
        return row[1] if row else DEFAULT_MARGIN_PCT

    def credit_price(self, version: int) -> Decimal:
        """The USD price of one credit at `version`."""
        row = _latest_at_or_below(self._credit, version)
        return row[1] if row else DEFAULT_CREDIT_PRICE_USD

    @property
    def models(self) -> list[str]:
        return sorted(self._models)
