"""Fixtures: the three fake providers on real local HTTP servers, and a client session.

These tests talk only to local fake upstreams and keep no state in Postgres or Redis, so the
integration suite's clean-database fixture is not needed here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.gemini_upstream import FakeGemini
from tests.fakes.upstream import FakeUpstream


@pytest.fixture(autouse=True)
def _start_clean() -> None:
    """Overrides the integration suite's DB/Redis reset: nothing here touches them."""


@pytest.fixture(autouse=True)
def _fresh_gateway() -> None:
    """Overrides the gateway suite's per-test reset: these tests run no gateway (the real
    gateway's tests with these fakes are in tests/integration/gateway/test_native_providers.py)."""


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fake_anthropic() -> AsyncIterator[FakeAnthropic]:
    fake = FakeAnthropic(api_key="sk-ant-test")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def fake_gemini() -> AsyncIterator[FakeGemini]:
    fake = FakeGemini(api_key="AIza-test")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def fake_bedrock() -> AsyncIterator[FakeBedrock]:
    fake = FakeBedrock(region="eu-west-3")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def provider_fakes(
    fake_anthropic: FakeAnthropic, fake_gemini: FakeGemini, fake_bedrock: FakeBedrock
) -> dict[str, FakeUpstream]:
    """All three fakes by provider kind, for tests parametrized over providers."""
    return {"anthropic": fake_anthropic, "gemini": fake_gemini, "bedrock": fake_bedrock}
