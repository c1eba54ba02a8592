"""The billing service's Litestar application (:8081)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar

from billing.alerts.endpoints import ROUTES as ALERT_ROUTES
from billing.alerts.metrics import ALERT_WEBHOOKS
from billing.balances.endpoints import ROUTES as BALANCE_ROUTES
from billing.finance.config import finance_config
from billing.finance.endpoints import finance_router
from billing.fold.endpoints import ROUTES as FOLD_ROUTES
from billing.fold_lag import FOLD_LAG
from billing.grants.endpoints import ROUTES as GRANT_ROUTES
from billing.ledger.endpoints import ROUTES as LEDGER_ROUTES
from billing.payments.endpoints import payments_lifespan, payments_router
from billing.payments.metrics import PAYMENTS_STATE
from billing.prices.endpoints import ROUTES as PRICE_ROUTES
from billing.usage.endpoints import ROUTES as USAGE_ROUTES
from tally.auth import load_signing_keys
from tally.config import Settings, get_settings
from tally.http import create_service_app
from tally.live_balance import LiveBalances

ROUTES = [
    *BALANCE_ROUTES,
    *LEDGER_ROUTES,
    *USAGE_ROUTES,
    *ALERT_ROUTES,
    *GRANT_ROUTES,
    *PRICE_ROUTES,
    *FOLD_ROUTES,
]


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    finance_config(settings)  # a bad finance setting stops the start, naming the variable
    app = create_service_app(
        "billing",
        [*ROUTES, finance_router, payments_router],
        settings=settings,
        lifespan=[_live_balances, payments_lifespan],
        # Platform-wide state read from Postgres when /metrics is scraped.
        database_collectors=[FOLD_LAG, PAYMENTS_STATE, ALERT_WEBHOOKS],
    )
    app.state.signing_keys = load_signing_keys(settings)
    return app


@asynccontextmanager
async def _live_balances(app: Litestar) -> AsyncIterator[None]:
    # Runs after the shared lifespan opened Redis.
    app.state.live = LiveBalances(app.state.redis)
    yield
