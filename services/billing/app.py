"""The billing service's Litestar application."""

from __future__ import annotations

from litestar import Litestar

from tally.http import create_service_app


def create_app() -> Litestar:
    return create_service_app("billing")
