"""The gateway service: the OpenAI-compatible `/v1/*` API in front of the providers.

`create_app` returns the `/v1/*` fast path (see `gateway.endpoints`) in front of the Litestar
app, which serves everything else and runs the lifespan.
"""

from __future__ import annotations

from gateway.endpoints import ROUTE_HANDLERS, FastPath
from gateway.runtime import gateway_runtime
from tally.config import Settings, get_settings
from tally.http import create_service_app


def create_app(settings: Settings | None = None) -> FastPath:
    settings = settings or get_settings()
    app = create_service_app(
        "gateway", ROUTE_HANDLERS, settings=settings, lifespan=[gateway_runtime]
    )
    fast_path = FastPath(app, settings.max_body_bytes)
    app.state.fast_path = fast_path
    return fast_path
