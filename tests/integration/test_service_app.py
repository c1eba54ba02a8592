"""What every service gets from tally.http: health, readiness, metrics, ids, the error shape."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from litestar import Litestar, get, post
from litestar.datastructures import State
from litestar.params import JSONBody
from litestar.testing import AsyncTestClient

from tally.config import get_settings, load_settings
from tally.errors import Conflict
from tally.http import create_service_app


class Widget(msgspec.Struct):
    name: str
    count: int


@post("/widgets")
async def create_widget(data: JSONBody[Widget]) -> Widget:
    if data.name == "taken":
        raise Conflict("a widget with this name exists", param="name")
    return data


@get("/count")
async def count_events(state: State) -> dict[str, int]:
    return {"events": await state.pool.fetchval("SELECT count(*) FROM events")}


@pytest.fixture
async def client() -> AsyncIterator[AsyncTestClient[Litestar]]:
    settings = msgspec.structs.replace(get_settings(), max_body_bytes=2048)
    app = create_service_app("testsvc", [create_widget], settings=settings)
    async with AsyncTestClient(app) as client:
        yield client


async def test_health_readiness_metrics_and_schema(client: AsyncTestClient[Litestar]) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/widgets" in schema["paths"]
    metrics = (await client.get("/metrics")).text
    assert (
        'tally_http_requests_total{method="GET",route="/readyz",service="testsvc",status="200"}'
        in metrics
    )


async def test_every_response_carries_a_request_id(client: AsyncTestClient[Litestar]) -> None:
    given = await client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert given.headers["x-request-id"] == "abc-123"
    fresh = await client.get("/healthz")
    assert len(fresh.headers["x-request-id"]) == 32
    hostile = await client.get("/healthz", headers={"x-request-id": "a\tb"})
    assert hostile.headers["x-request-id"] != "a\tb"


async def test_errors_use_one_shape(client: AsyncTestClient[Litestar]) -> None:
    missing = await client.get("/nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"

    wrong_type = await client.post("/widgets", json={"name": "a", "count": "three"})
    assert wrong_type.status_code == 400
    body = wrong_type.json()["error"]
    assert body["code"] == "invalid_request"
    assert "Expected `int`, got `str`" in body["message"]

    malformed = await client.post(
        "/widgets", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 400

    conflict = await client.post("/widgets", json={"name": "taken", "count": 1})
    assert conflict.status_code == 409
    assert conflict.json() == {
        "error": {
            "message": "a widget with this name exists",
            "type": "invalid_request_error",
            "param": "name",
            "code": "conflict",
        }
    }


async def test_oversized_bodies_are_refused(client: AsyncTestClient[Litestar]) -> None:
    big = await client.post(
        "/widgets",
        content=b'{"name": "' + b"x" * 10_000 + b'", "count": 1}',
        headers={"content-type": "application/json"},
    )
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "request_too_large"


async def test_without_postgres_the_service_starts_unready_and_answers_503() -> None:
    settings = load_settings(
        {
            "TALLY_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
            "TALLY_REDIS_URL": get_settings().redis_url,
        }
    )
    app = create_service_app("testsvc", [count_events], settings=settings)
    async with AsyncTestClient(app) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["postgres"].startswith("error")
        needs_db = await client.get("/count")
        assert needs_db.status_code == 503
        assert needs_db.json()["error"]["code"] == "service_unavailable"
        assert needs_db.headers["retry-after"] == "1"
