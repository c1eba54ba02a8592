"""The gateway service: the OpenAI-compatible `/v1/*` API in front of the providers.

`create_app` returns the Litestar app with the `/v1/*` fast path (see `gateway.endpoints`)
installed in front of its router.
"""

from __future__ import annotations

from litestar import Litestar

from gateway.endpoints import ROUTE_HANDLERS, FastPath
from gateway.runtime import gateway_runtime
from tally.config import Settings, get_settings
from tally.http import create_service_app


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    app = create_service_app(
        "gateway", ROUTE_HANDLERS, settings=settings, lifespan=[gateway_runtime]
    )
    # In front of Litestar's router (after Litestar.__call__ has set up the scope): `/v1/*`
    # goes to the fast path, everything else on to Litestar's own handler stack.
    fast_path = FastPath(app.asgi_handler, settings.max_body_bytes)
    app.asgi_handler = fast_path  # type: ignore[assignment]
    app.state.fast_path = fast_path
    return app
