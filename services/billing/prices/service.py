"""The price book's write side: model prices, the default margin, the credit price, imports.

Every change takes the next price-book version (`tally.pricebook.allocate_price_version`, which
also keeps versions committing in order), writes its row and appends its event in one
transaction, and after the commit tells every reader to drop its cached book (invalidation
"prices" "*"). A margin below zero prices a request below the provider's base cost: such a
change is refused unless forced, and a forced one is reported in the answer, the log and the
event.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import msgspec
import redis.asyncio as redis

from billing.errors import InvalidBillingRequest, PriceBelowCost
from billing.prices import repository
from billing.prices.schemas import (
    Catalog,
    CatalogEntry,
    ImportOut,
    ModelPriceOut,
    PriceBookOut,
    PriceChangeOut,
    PriceIn,
    ScheduledPrice,
    TenantMarginOut,
)
from tally.db import Connection
from tally.eventlog import NewEvent, append_events
from tally.events.billing import CreditPriceChanged, DefaultMarginChanged, PriceChanged
from tally.events.tenant import Actor
from tally.invalidation import publish_invalidation
from tally.log import get_logger
from tally.pricebook import (
    DEFAULT_CREDIT_PRICE_USD,
    DEFAULT_MARGIN_PCT,
    PriceBookSnapshot,
    allocate_price_version,
    current_price_version,
)
from tally.pricing import ModelPrice, PricingError

log = get_logger(__name__)

MAX_RATE_USD = Decimal(1_000_000)
MAX_MARGIN_PCT = Decimal(10_000)
MIN_MARGIN_PCT = Decimal(-100)
# Finer than this is a typo, not a price (a millionth of a micro-dollar per million tokens).
MIN_EXPONENT = -12

_catalog_decoder = msgspec.json.Decoder(Catalog)


def _check_decimal(value: Decimal, param: str, *, low: Decimal, high: Decimal) -> Decimal:
    if not value.is_finite():
        raise InvalidBillingRequest(f"{param} must be a finite number", param=param)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < MIN_EXPONENT:
        raise InvalidBillingRequest(f"{param} has more than 12 decimals", param=param)
    if not low <= value <= high:
        raise InvalidBillingRequest(f"{param} must be between {low} and {high}", param=param)
    return value


def check_rate(value: Decimal, param: str) -> Decimal:
    """A USD rate: finite, not negative, at most a million."""
    return _check_decimal(value, param, low=Decimal(0), high=MAX_RATE_USD)


def check_margin(value: Decimal, param: str = "margin_pct") -> Decimal:
    """A margin in percent: above -100 (a price of zero or less is no price) and at most 10000."""
    _check_decimal(value, param, low=MIN_MARGIN_PCT, high=MAX_MARGIN_PCT)
    if value == MIN_MARGIN_PCT:
        raise InvalidBillingRequest(f"{param} must be above -100", param=param)
    return value


def _effective_at(value: datetime | None, param: str = "effective_at") -> datetime:
    if value is None:
        return datetime.now(UTC)
    if value.tzinfo is None:
        raise InvalidBillingRequest(
            f"{param} needs a timezone (e.g. 2026-01-01T00:00:00Z)", param=param
        )
    return value


def model_price_of(data: PriceIn | CatalogEntry) -> ModelPrice:
    """The validated `ModelPrice` of a request or catalog entry."""
    check_rate(data.input_per_mtok, "input_per_mtok")
    check_rate(data.output_per_mtok, "output_per_mtok")
    for name in ("cached_input_per_mtok", "cache_write_per_mtok", "reasoning_per_mtok"):
        value = getattr(data, name)
        if value is not None:
            check_rate(value, name)
    check_rate(data.per_request, "per_request")
    for key, value in data.per_image.items():
        check_rate(value, f"per_image.{key}")
    try:
        return ModelPrice(
            input_per_mtok=data.input_per_mtok,
            output_per_mtok=data.output_per_mtok,
            cached_input_per_mtok=data.cached_input_per_mtok,
            cache_write_per_mtok=data.cache_write_per_mtok,
            reasoning_per_mtok=data.reasoning_per_mtok,
            per_image=dict(data.per_image),
            per_request=data.per_request,
        )
    except PricingError as exc:  # pragma: no cover - the checks above come first
        raise InvalidBillingRequest(str(exc)) from None


def load_catalog(path: Path) -> Catalog:
    """Read a catalog file (JSON); errors name the file and the field."""
    try:
        return _catalog_decoder.decode(path.read_bytes())
    except OSError as exc:
        raise InvalidBillingRequest(f"cannot read {path}: {exc.strerror}") from None
    except msgspec.ValidationError as exc:
        raise InvalidBillingRequest(f"{path}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise InvalidBillingRequest(f"{path} is not valid JSON: {exc}") from None


class PriceService:
    async def set_price(
        self, conn: Connection, cache: redis.Redis | None, data: PriceIn, actor: Actor
    ) -> PriceChangeOut:
        """Set a model's base prices and margin (a new price-book version)."""
        price = model_price_of(data)
        margin = check_margin(data.margin_pct) if data.margin_pct is not None else None
        effective_at = _effective_at(data.effective_at)
        async with conn.transaction():
            change = await self._write_model_price(
                conn, data.model, price, margin, effective_at, data.force, actor
            )
        await _invalidate(cache)
        return change

    async def set_default_margin(
        self,
        conn: Connection,
        cache: redis.Redis | None,
        margin: Decimal,
        force: bool,
        actor: Actor,
    ) -> PriceChangeOut:
        """Set the margin of every model that has none of its own."""
        check_margin(margin)
        async with conn.transaction():
            version = await allocate_price_version(conn)
            warnings = []
            if margin < 0:
                affected = await repository.models_on_default_margin(conn)
                warnings.append(
                    f"default margin {margin}% prices below base cost"
                    + (f" for {', '.join(affected)}" if affected else "")
                )
            _refuse_unless_forced(warnings, force, "margin_pct")
            await repository.insert_default_margin(conn, version, margin)
            event = DefaultMarginChanged(
                price_version=version,
                margin_pct=margin,
                actor=actor,
                forced_below_cost=bool(warnings),
            )
            await append_events(conn, [NewEvent(event, f"price-book:{version}")])
        await _invalidate(cache)
        _report(warnings, version)
        return PriceChangeOut(
            price_version=version, margin_pct=margin, forced=bool(warnings), warnings=warnings
        )

    async def set_credit_price(
        self, conn: Connection, cache: redis.Redis | None, usd: Decimal, actor: Actor
    ) -> PriceChangeOut:
        """Set the USD price of one credit (default 1)."""
        _check_decimal(usd, "credit_price_usd", low=Decimal(0), high=MAX_RATE_USD)
        if usd <= 0:
            raise InvalidBillingRequest(
                "credit_price_usd must be positive", param="credit_price_usd"
            )
        async with conn.transaction():
            version = await allocate_price_version(conn)
            await repository.insert_credit_price(conn, version, usd)
            event = CreditPriceChanged(price_version=version, credit_price_usd=usd, actor=actor)
            await append_events(conn, [NewEvent(event, f"price-book:{version}")])
        await _invalidate(cache)
        return PriceChangeOut(price_version=version, credit_price_usd=usd)

    async def import_catalog(
        self,
        conn: Connection,
        cache: redis.Redis | None,
        catalog: Catalog,
        *,
        margin_pct: Decimal | None,
        effective_at: datetime | None,
        force: bool,
        actor: Actor,
    ) -> ImportOut:
        """Set every model of a catalog in one transaction; unchanged models are skipped."""
        if not catalog.models:
            raise InvalidBillingRequest("the catalog lists no models", param="models")
        seen: set[str] = set()
        prepared: list[tuple[CatalogEntry, ModelPrice, Decimal | None]] = []
        for index, entry in enumerate(catalog.models):
            if entry.model in seen:
                raise InvalidBillingRequest(
                    f"model {entry.model} is listed twice", param=f"models[{index}].model"
                )
            seen.add(entry.model)
            margin = entry.margin_pct if entry.margin_pct is not None else margin_pct
            try:
                price = model_price_of(entry)
                if margin is not None:
                    check_margin(margin)
            except InvalidBillingRequest as exc:
                raise InvalidBillingRequest(
                    f"models[{index}] ({entry.model}): {exc.message}",
                    param=f"models[{index}].{exc.param}",
                ) from None
            prepared.append((entry, price, margin))
        when = _effective_at(effective_at)
        imported: list[PriceChangeOut] = []
        unchanged: list[str] = []
        async with conn.transaction():
            book = await PriceBookSnapshot.load(conn)
            version_now = await current_price_version(conn)
            for entry, price, margin in prepared:
                current = book.effective_price(
                    tenant_id=None, model=entry.model, version=version_now, at=when
                )
                if (
                    current is not None
                    and current.price == price
                    and (_own_margin(book, entry.model, version_now, when) == margin)
                ):
                    unchanged.append(entry.model)
                    continue
                imported.append(
                    await self._write_model_price(
                        conn, entry.model, price, margin, when, force, actor
                    )
                )
        if imported:
            await _invalidate(cache)
        warnings = [w for change in imported for w in change.warnings]
        return ImportOut(imported=imported, unchanged=unchanged, warnings=warnings)

    async def price_book(self, conn: Connection, *, at: datetime | None = None) -> PriceBookOut:
        """The book in force at `at` (default now), scheduled changes, and below-cost findings."""
        moment = at or datetime.now(UTC)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            book = await PriceBookSnapshot.load(conn)
            version = await current_price_version(conn)
            rows = await repository.history(conn, None, 100_000)
            overrides = await repository.tenant_overrides(conn)
        default_margin = book.default_margin(version)
        models: dict[str, ModelPriceOut] = {}
        below: list[str] = []
        for row in sorted(rows, key=lambda r: (r["model"], r["price_version"])):
            model = row["model"]
            current = book.effective_price(tenant_id=None, model=model, version=version, at=moment)
            if model not in models:
                if current is None:
                    continue  # only scheduled rows so far: listed with the first in force
                margin = current.margin_pct
                own = _own_margin(book, model, version, moment)
                models[model] = ModelPriceOut(
                    model=model,
                    price_version=_version_of(book, model, version, moment),
                    price=current.price,
                    margin_pct=own,
                    effective_margin_pct=margin,
                    effective_at=_effective_of(book, model, version, moment),
                    below_cost=margin < 0,
                )
                if margin < 0:
                    below.append(f"{model}: margin {margin}% is below base cost")
            if row["effective_at"] > moment:
                models[model].scheduled.append(
                    ScheduledPrice(
                        price_version=row["price_version"],
                        price=msgspec.json.decode(row["price"], type=ModelPrice),
                        margin_pct=row["margin_pct"],
                        effective_at=row["effective_at"],
                    )
                )
        tenants = [
            TenantMarginOut(tenant_id=str(t), margin_pct=m, below_cost=m < 0) for t, m in overrides
        ]
        below.extend(
            f"tenant {t.tenant_id}: margin override {t.margin_pct}% is below base cost"
            for t in tenants
            if t.below_cost
        )
        return PriceBookOut(
            price_version=version,
            default_margin_pct=default_margin,
            credit_price_usd=book.credit_price(version),
            models=sorted(models.values(), key=lambda m: m.model),
            tenant_margins=tenants,
            below_cost=below,
        )

    async def _write_model_price(
        self,
        conn: Connection,
        model: str,
        price: ModelPrice,
        margin: Decimal | None,
        effective_at: datetime,
        force: bool,
        actor: Actor,
    ) -> PriceChangeOut:
        version = await allocate_price_version(conn)
        effective_margin = margin
        if effective_margin is None:
            effective_margin = await repository.current_default_margin(conn) or DEFAULT_MARGIN_PCT
        warnings = []
        if effective_margin < 0:
            source = "its margin" if margin is not None else "the default margin"
            warnings.append(f"{model}: {source} of {effective_margin}% prices it below base cost")
        _refuse_unless_forced(warnings, force, "margin_pct")
        price_json = msgspec.json.encode(price).decode()
        await repository.insert_model_price(conn, model, version, price_json, margin, effective_at)
        event = PriceChanged(
            price_version=version,
            model=model,
            price=price,
            margin_pct=margin,
            effective_at=effective_at,
            actor=actor,
            forced_below_cost=bool(warnings),
        )
        await append_events(conn, [NewEvent(event, f"price-book:{version}")])
        _report(warnings, version)
        return PriceChangeOut(
            price_version=version,
            model=model,
            price=price,
            margin_pct=margin,
            effective_at=effective_at,
            forced=bool(warnings),
            warnings=warnings,
        )


price_service = PriceService()


def _refuse_unless_forced(warnings: list[str], force: bool, param: str) -> None:
    if warnings and not force:
        raise PriceBelowCost("; ".join(warnings) + ". Pass force to accept it anyway.", param=param)


def _report(warnings: list[str], version: int) -> None:
    for warning in warnings:
        log.warning(
            "price below base cost accepted (forced)", finding=warning, price_version=version
        )


async def _invalidate(cache: redis.Redis | None) -> None:
    if cache is None:
        return
    try:
        await publish_invalidation(cache, "prices", "*")
    except Exception as exc:  # the change is committed; readers also re-check the version
        log.warning("price invalidation not published", error=repr(exc))


def _own_margin(book: PriceBookSnapshot, model: str, version: int, at: datetime) -> Decimal | None:
    row = book.model_row(model, version, at)
    return row[2] if row else None


def _version_of(book: PriceBookSnapshot, model: str, version: int, at: datetime) -> int:
    row = book.model_row(model, version, at)
    return row[0] if row else 0


def _effective_of(book: PriceBookSnapshot, model: str, version: int, at: datetime) -> datetime:
    row = book.model_row(model, version, at)
    return row[3] if row else at


__all__ = ["DEFAULT_CREDIT_PRICE_USD", "PriceService", "load_catalog", "price_service"]
