"""Fixtures of the billing tests: the billing app with real auth, tokens for each role."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from billing.app import create_app
from tally.auth import Principal, SigningKeys, issue_access_token, new_signing_key_entry
from tally.config import Settings, get_settings
from tests.fakes.webhook_receiver import receiver  # noqa: F401 (a fixture)


@pytest.fixture
def billing_settings() -> Settings:
    return msgspec.structs.replace(get_settings(), jwt_keys=new_signing_key_entry("test1"))


@pytest.fixture
async def api(billing_settings: Settings) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(create_app(billing_settings)) as client:
        yield client


TokenFor = Callable[..., dict[str, str]]


@pytest.fixture
def token_for(billing_settings: Settings) -> TokenFor:
    """Authorization headers for a person: platform roles and tenant memberships."""
    keys = SigningKeys.parse(billing_settings.jwt_keys)

    def make(*roles: str, tenants: dict[uuid.UUID, str] | None = None) -> dict[str, str]:
        principal = Principal(
            user_id=uuid.uuid4(),
            email="someone@example.com",
            platform_roles=frozenset(roles),
            tenants=tenants or {},
        )
        return {"Authorization": f"Bearer {issue_access_token(keys, billing_settings, principal)}"}

    return make
