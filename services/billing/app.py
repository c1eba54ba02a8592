"""The billing service's Litestar application."""

from __future__ import annotations

from litestar import Litestar

from billing.finance.config import finance_config
from billing.finance.endpoints import finance_router
from billing.payments.endpoints import payments_lifespan, payments_router
from tally.auth import load_signing_keys
from tally.config import Settings, get_settings
from tally.http import create_service_app


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    finance_config(settings)  # a bad finance setting stops the start, naming the variable
    app = create_service_app(
        "billing",
        [finance_router, payments_router],
        settings=settings,
        lifespan=[payments_lifespan],
    )
    app.state.signing_keys = load_signing_keys(settings)
    return app
