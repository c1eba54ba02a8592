"""Price book admin: read (operators, finance) and change (operators)."""

from __future__ import annotations

from typing import Annotated

from litestar import get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from billing.http_context import actor_of, connection, parse_moment
from billing.prices.schemas import (
    CatalogImportIn,
    CreditPriceIn,
    DefaultMarginIn,
    ImportOut,
    PriceBookOut,
    PriceChangeOut,
    PriceIn,
)
from billing.prices.service import price_service
from tally.auth import Principal, require_platform_role

_READ = [require_platform_role("operator", "finance")]
_WRITE = [require_platform_role("operator")]


@get("/v1/admin/prices", guards=_READ, tags=["prices"])
async def get_price_book(
    state: State, at: Annotated[str | None, QueryParameter(name="at", max_length=64)] = None
) -> PriceBookOut:
    """The book in force (at `at`, default now), scheduled changes and below-cost findings."""
    async with connection(state) as conn:
        return await price_service.price_book(conn, at=parse_moment(at, "at"))


@post("/v1/admin/prices", guards=_WRITE, tags=["prices"])
async def post_price(
    data: JSONBody[PriceIn], principal: NamedDependency[Principal], state: State
) -> PriceChangeOut:
    """Set a model's base prices and margin (refused below cost unless `force`)."""
    async with connection(state) as conn:
        return await price_service.set_price(conn, state.redis, data, actor_of(principal))


@put("/v1/admin/prices/default-margin", guards=_WRITE, tags=["prices"])
async def put_default_margin(
    data: JSONBody[DefaultMarginIn], principal: NamedDependency[Principal], state: State
) -> PriceChangeOut:
    async with connection(state) as conn:
        return await price_service.set_default_margin(
            conn, state.redis, data.margin_pct, data.force, actor_of(principal)
        )


@put("/v1/admin/prices/credit-price", guards=_WRITE, tags=["prices"])
async def put_credit_price(
    data: JSONBody[CreditPriceIn], principal: NamedDependency[Principal], state: State
) -> PriceChangeOut:
    async with connection(state) as conn:
        return await price_service.set_credit_price(
            conn, state.redis, data.credit_price_usd, actor_of(principal)
        )


@post("/v1/admin/prices/import", guards=_WRITE, tags=["prices"])
async def post_price_import(
    data: JSONBody[CatalogImportIn], principal: NamedDependency[Principal], state: State
) -> ImportOut:
    """Import a catalog (all or nothing; unchanged models are skipped)."""
    async with connection(state) as conn:
        return await price_service.import_catalog(
            conn,
            state.redis,
            data.catalog,
            margin_pct=data.margin_pct,
            effective_at=data.effective_at,
            force=data.force,
            actor=actor_of(principal),
        )


ROUTES = [get_price_book, post_price, put_default_margin, put_credit_price, post_price_import]
