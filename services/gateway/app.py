"""The gateway service: the OpenAI-compatible `/v1/*` API in front of the providers.

`create_app` returns the Litestar app with the `/v1/*` fast path in front of its own request
handling (`gateway.endpoints.GatewayApp`).
"""

from __future__ import annotations

from gateway.endpoints import ROUTE_HANDLERS, FastPath, GatewayApp
from gateway.runtime import gateway_runtime
from tally.config import Settings, get_settings
from tally.http import create_service_app


def create_app(settings: Settings | None = None) -> GatewayApp:
    settings = settings or get_settings()
    app = create_service_app(
        "gateway",
        ROUTE_HANDLERS,
        settings=settings,
        lifespan=[gateway_runtime],
        app_class=GatewayApp,
    )
    assert isinstance(app, GatewayApp)
    app.fast_path = FastPath(settings.max_body_bytes)
    app.state.fast_path = app.fast_path
    return app
