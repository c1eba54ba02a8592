"""The billing API: who may call what, what it answers, and bad input → a precise 4xx with
nothing written."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from billing.fold.service import Folder
from tests.integration.billing.conftest import TokenFor
from tests.integration.billing.helpers import append, create_tenant, gateway_usage, set_price

CREDIT = 10**9
Client = AsyncTestClient[Litestar]


async def _counts(pool: asyncpg.Pool) -> tuple[int, ...]:
    """Everything a write could touch."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM model_prices),"
            " (SELECT count(*) FROM default_margins), (SELECT count(*) FROM credit_prices),"
            " (SELECT count(*) FROM low_balance_alerts), (SELECT count(*) FROM ledger_entries)"
        )
    return tuple(row)


def _error(response: Any, status: int, code: str | None = None, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error


async def test_routes_need_a_valid_token(api: Client, pool: asyncpg.Pool) -> None:
    tenant = await create_tenant(pool)
    for path in (f"/v1/tenants/{tenant}/balance", "/v1/admin/prices", "/v1/admin/overview"):
        _error(await api.get(path), 401, "missing_token")
        _error(await api.get(path, headers={"Authorization": "Bearer nonsense"}), 401)


async def test_a_tenant_never_sees_another_tenants_data(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor
) -> None:
    mine, theirs = await create_tenant(pool), await create_tenant(pool)
    me = token_for(tenants={mine: "owner"})
    for suffix in ("balance", "ledger", "usage", "notifications", "alerts/low-balance"):
        assert (await api.get(f"/v1/tenants/{mine}/{suffix}", headers=me)).status_code in (200, 404)
        _error(await api.get(f"/v1/tenants/{theirs}/{suffix}", headers=me), 404)
    _error(
        await api.put(
            f"/v1/tenants/{theirs}/alerts/low-balance",
            json={"threshold_nano": 1, "url": "https://example.com/hook"},
            headers=me,
        ),
        404,
    )
    # Platform routes are for platform roles only.
    for path in ("/v1/admin/prices", "/v1/admin/overview", "/v1/admin/pricing-mismatches"):
        _error(await api.get(path, headers=me), 403, "forbidden")
    _error(
        await api.post(f"/v1/admin/tenants/{mine}/grants", json={"amount_nano": 1}, headers=me),
        403,
    )


async def test_balance_shows_a_grant_at_once_and_the_ledger_after_the_fold(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor
) -> None:
    tenant = await create_tenant(pool)
    operator = token_for("operator")
    granted = await api.post(
        f"/v1/admin/tenants/{tenant}/grants",
        json={"amount_nano": 5 * CREDIT, "kind": "promotional", "reason": "welcome"},
        headers=operator,
    )
    assert granted.status_code == 201, granted.text
    member = token_for(tenants={tenant: "member"})
    balance = (await api.get(f"/v1/tenants/{tenant}/balance", headers=member)).json()
    assert balance["balance_nano"] == 5 * CREDIT
    assert balance["available_nano"] == 5 * CREDIT
    assert balance["folded_balance_nano"] == 0 and balance["pending_events"] == 2
    assert balance["promotional_remaining_nano"] == 5 * CREDIT

    await Folder(pool, shard_count=1).drain()
    balance = (await api.get(f"/v1/tenants/{tenant}/balance", headers=member)).json()
    assert (balance["folded_balance_nano"], balance["pending_events"]) == (5 * CREDIT, 0)
    ledger = (await api.get(f"/v1/tenants/{tenant}/ledger", headers=member)).json()
    assert [(line["kind"], line["amount_nano"]) for line in ledger["data"]] == [
        ("grant", 5 * CREDIT)
    ]
    assert ledger["data"][0]["description"] == "Promotional credits: welcome"


async def test_the_ledger_pages_by_cursor_and_filters_by_kind_and_time(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor
) -> None:
    tenant = await create_tenant(pool)
    await set_price(pool, "m", "1", "1")
    operator = token_for("operator")
    await api.post(
        f"/v1/admin/tenants/{tenant}/grants", json={"amount_nano": 9 * CREDIT}, headers=operator
    )
    for _ in range(5):
        await append(
            pool, await gateway_usage(pool, tenant, "m", input_tokens=1_000_000, output_tokens=0)
        )
    await Folder(pool, shard_count=1).drain()
    member = token_for(tenants={tenant: "member"})

    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = (await api.get(f"/v1/tenants/{tenant}/ledger", params=params, headers=member)).json()
        seen += [line["position"] for line in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 6 and seen == sorted(seen, reverse=True)
    usage = (
        await api.get(f"/v1/tenants/{tenant}/ledger", params={"kind": "usage"}, headers=member)
    ).json()
    assert len(usage["data"]) == 5
    assert {line["kind"] for line in usage["data"]} == {"usage"}
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    empty = (
        await api.get(f"/v1/tenants/{tenant}/ledger", params={"from": future}, headers=member)
    ).json()
    assert empty["data"] == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"kind": "usage,bogus"}, "kind"),
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-01-01T00:00:00"}, "from"),
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
    ],
)
async def test_bad_ledger_queries_are_400(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor, params: dict[str, str], param: str
) -> None:
    tenant = await create_tenant(pool)
    response = await api.get(
        f"/v1/tenants/{tenant}/ledger", params=params, headers=token_for(tenants={tenant: "member"})
    )
    _error(response, 400, param=param)


async def test_usage_analytics_totals_breakdowns_and_series(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor
) -> None:
    tenant = await create_tenant(pool)
    since_2020 = datetime(2020, 1, 1, tzinfo=UTC)
    await set_price(pool, "m1", "1", "2", margin="50", effective_at=since_2020)
    await set_price(pool, "m2", "3", "4", margin="50", effective_at=since_2020)
    key_a, key_b = uuid.uuid4(), uuid.uuid4()
    day = (datetime.now(UTC) - timedelta(days=1)).replace(
        hour=12, minute=0, second=0, microsecond=0
    )
    for model, key, at in (
        ("m1", key_a, day),
        ("m1", key_b, day + timedelta(minutes=5)),
        ("m2", key_a, day + timedelta(hours=1)),
    ):
        await append(
            pool,
            await gateway_usage(
                pool,
                tenant,
                model,
                key_id=key,
                input_tokens=1_000_000,
                output_tokens=0,
                occurred_at=at,
            ),
        )
    await Folder(pool, shard_count=1).drain()
    since = (day - timedelta(days=2)).isoformat()
    until = (day + timedelta(days=1)).isoformat()
    member = token_for(tenants={tenant: "member"})
    report = (
        await api.get(
            f"/v1/tenants/{tenant}/usage",
            params={"from": since, "to": until, "group_by": "model"},
            headers=member,
        )
    ).json()
    assert report["totals"]["requests"] == 3
    assert report["totals"]["charge_nano"] == (1 + 1 + 3) * 1_500_000_000
    assert "base_nano" not in report["totals"]  # the platform's cost is not the tenant's business
    assert [m["model"] for m in report["by_model"]] == ["m2", "m1"]
    assert {k["key_id"] for k in report["by_key"]} == {str(key_a), str(key_b)}
    # Partial first and last days are buckets too: the 2 days before, the day, the day after.
    assert len(report["buckets"]) == 4
    used = report["buckets"].index(day.replace(hour=0).isoformat().replace("+00:00", "Z"))
    for line in report["series"]:
        assert len(line["requests"]) == len(line["charge_nano"]) == 4
    m1 = next(line for line in report["series"] if line["name"] == "m1")
    assert m1["requests"][used] == 2 and sum(m1["requests"]) == 2

    operator = token_for("operator")
    seen_by_operator = (
        await api.get(
            f"/v1/tenants/{tenant}/usage", params={"from": since, "to": until}, headers=operator
        )
    ).json()
    assert seen_by_operator["totals"]["base_nano"] == 5 * CREDIT
    assert seen_by_operator["totals"]["margin_nano"] == 5 * CREDIT // 2
    overview = (
        await api.get(
            "/v1/admin/overview", params={"from": since, "to": until}, headers=token_for("finance")
        )
    ).json()
    assert overview["totals"]["charge_nano"] == 7_500_000_000
    assert overview["by_tenant"][0]["tenant_id"] == str(tenant)
    assert {m["model"] for m in overview["by_model"]} == {"m1", "m2"}


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"granularity": "minute"}, "granularity"),
        ({"group_by": "colour"}, "group_by"),
        ({"key_id": "not-a-uuid"}, "key_id"),
        (
            {"granularity": "hour", "from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            "from",
        ),
    ],
)
async def test_bad_usage_queries_are_400(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor, params: dict[str, str], param: str
) -> None:
    tenant = await create_tenant(pool)
    response = await api.get(
        f"/v1/tenants/{tenant}/usage", params=params, headers=token_for("operator")
    )
    _error(response, 400, param=param)


async def test_a_price_below_cost_is_refused_unless_forced_and_then_reported(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor
) -> None:
    operator = token_for("operator")
    before = await _counts(pool)
    refused = await api.post(
        "/v1/admin/prices",
        json={"model": "gpt-x", "input_per_mtok": "2.5", "output_per_mtok": 10, "margin_pct": "-5"},
        headers=operator,
    )
    _error(refused, 400, "price_below_cost", "margin_pct")
    assert await _counts(pool) == before
    forced = await api.post(
        "/v1/admin/prices",
        json={
            "model": "gpt-x",
            "input_per_mtok": "2.5",
            "output_per_mtok": 10,
            "margin_pct": "-5",
            "force": True,
        },
        headers=operator,
    )
    assert forced.status_code == 201, forced.text
    assert forced.json()["forced"] is True and forced.json()["warnings"]
    book = (await api.get("/v1/admin/prices", headers=token_for("finance"))).json()
    assert book["models"][0]["model"] == "gpt-x" and book["models"][0]["below_cost"] is True
    assert book["below_cost"] == ["gpt-x: margin -5% is below base cost"]
    # A default margin below zero is refused the same way.
    _error(
        await api.put(
            "/v1/admin/prices/default-margin", json={"margin_pct": "-1"}, headers=operator
        ),
        400,
        "price_below_cost",
    )


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "input_per_mtok": "-1", "output_per_mtok": "1"}, "input_per_mtok"),
        ({"model": "m", "input_per_mtok": "NaN", "output_per_mtok": "1"}, "input_per_mtok"),
        ({"model": "m", "input_per_mtok": "1", "output_per_mtok": "1e9"}, "output_per_mtok"),
        (
            {"model": "m", "input_per_mtok": "0.0000000000001", "output_per_mtok": "1"},
            "input_per_mtok",
        ),
        (
            {
                "model": "m",
                "input_per_mtok": "1",
                "output_per_mtok": "1",
                "margin_pct": "-100",
                "force": True,
            },
            "margin_pct",
        ),
        (
            {"model": "m", "input_per_mtok": "1", "output_per_mtok": "1", "margin_pct": "Infinity"},
            "margin_pct",
        ),
        ({"model": "bad model", "input_per_mtok": "1", "output_per_mtok": "1"}, "model"),
        ({"model": "", "input_per_mtok": "1", "output_per_mtok": "1"}, "model"),
        ({"model": "m", "input_per_mtok": "1"}, None),
        ({"model": "m", "input_per_mtok": "1", "output_per_mtok": "1", "colour": "red"}, None),
        (
            {
                "model": "m",
                "input_per_mtok": "1",
                "output_per_mtok": "1",
                "effective_at": "2026-01-01T00:00:00",
            },
            "effective_at",
        ),
        (
            {
                "model": "m",
                "input_per_mtok": "1",
                "output_per_mtok": "1",
                "per_image": {"1024x1024": "-2"},
            },
            "per_image.1024x1024",
        ),
    ],
)
async def test_bad_prices_are_400_and_write_nothing(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor, body: dict[str, Any], param: str | None
) -> None:
    before = await _counts(pool)
    response = await api.post("/v1/admin/prices", json=body, headers=token_for("operator"))
    _error(response, 400, param=param)
    assert await _counts(pool) == before


async def test_malformed_json_is_400(api: Client, token_for: TokenFor) -> None:
    response = await api.post(
        "/v1/admin/prices",
        content=b"{not json",
        headers={**token_for("operator"), "content-type": "application/json"},
    )
    _error(response, 400)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("grants", {"amount_nano": 0}, None),
        ("grants", {"amount_nano": -5}, None),
        ("grants", {"amount_nano": 5, "kind": "starter"}, None),
        ("grants", {"amount_nano": 5, "expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
        ("grants", {"amount_nano": 5, "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ("grants", {"amount_nano": 5, "reason": "x" * 501}, None),
        ("grants", {"amount_nano": 10**19}, None),
        ("adjustments", {"amount_nano": 5}, None),
        ("adjustments", {"amount_nano": 5, "reason": ""}, None),
        ("adjustments", {"amount_nano": 5, "reason": "   "}, "reason"),
        ("adjustments", {"amount_nano": 0, "reason": "fix"}, "amount_nano"),
    ],
)
async def test_bad_grants_and_adjustments_are_400_and_write_nothing(
    api: Client,
    pool: asyncpg.Pool,
    token_for: TokenFor,
    path: str,
    body: dict[str, Any],
    param: str | None,
) -> None:
    tenant = await create_tenant(pool)
    before = await _counts(pool)
    response = await api.post(
        f"/v1/admin/tenants/{tenant}/{path}", json=body, headers=token_for("operator")
    )
    _error(response, 400, param=param)
    assert await _counts(pool) == before


async def test_grants_for_an_unknown_tenant_are_404(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor
) -> None:
    before = await _counts(pool)
    response = await api.post(
        f"/v1/admin/tenants/{uuid.uuid4()}/grants",
        json={"amount_nano": 5},
        headers=token_for("operator"),
    )
    _error(response, 404, "tenant_not_found")
    assert await _counts(pool) == before
    _error(await api.get("/v1/tenants/not-a-uuid/balance", headers=token_for("operator")), 404)


async def test_adjustments_move_the_balance_either_way(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor
) -> None:
    tenant = await create_tenant(pool)
    operator = token_for("operator")
    up = await api.post(
        f"/v1/admin/tenants/{tenant}/adjustments",
        json={"amount_nano": 3 * CREDIT, "reason": "outage credit"},
        headers=operator,
    )
    down = await api.post(
        f"/v1/admin/tenants/{tenant}/adjustments",
        json={"amount_nano": -CREDIT, "reason": "double grant"},
        headers=operator,
    )
    assert up.status_code == down.status_code == 201
    balance = (await api.get(f"/v1/tenants/{tenant}/balance", headers=operator)).json()
    assert balance["balance_nano"] == 2 * CREDIT
    assert balance["adjusted_nano"] == 2 * CREDIT


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"threshold_nano": -1, "url": "https://example.com/h"}, None),
        ({"threshold_nano": 1, "url": "ftp://example.com/h"}, "url"),
        ({"threshold_nano": 1, "url": "not a url"}, "url"),
        ({"threshold_nano": 1, "url": ""}, None),
        ({"threshold_nano": 1}, None),
        ({"threshold_nano": 1.5, "url": "https://example.com/h"}, None),
    ],
)
async def test_bad_alert_settings_are_400_and_write_nothing(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor, body: dict[str, Any], param: str | None
) -> None:
    tenant = await create_tenant(pool)
    before = await _counts(pool)
    response = await api.put(
        f"/v1/tenants/{tenant}/alerts/low-balance",
        json=body,
        headers=token_for(tenants={tenant: "admin"}),
    )
    _error(response, 400, param=param)
    assert await _counts(pool) == before


async def test_alert_settings_need_a_tenant_admin_and_show_the_secret_once(
    api: Client, pool: asyncpg.Pool, token_for: TokenFor
) -> None:
    tenant = await create_tenant(pool)
    path = f"/v1/tenants/{tenant}/alerts/low-balance"
    body = {"threshold_nano": 2 * CREDIT, "url": "https://example.com/hook"}
    _error(await api.put(path, json=body, headers=token_for(tenants={tenant: "member"})), 403)
    admin = token_for(tenants={tenant: "admin"})
    first = (await api.put(path, json=body, headers=admin)).json()
    assert first["signing_secret"].startswith("whsec_")
    again = (await api.put(path, json={**body, "threshold_nano": CREDIT}, headers=admin)).json()
    assert "signing_secret" not in again and again["threshold_nano"] == CREDIT
    shown = (await api.get(path, headers=token_for(tenants={tenant: "member"}))).json()
    assert "signing_secret" not in shown
    assert (await api.delete(path, headers=admin)).status_code == 204
    _error(await api.delete(path, headers=admin), 404, "alert_not_found")
    _error(await api.get(path, headers=admin), 404, "alert_not_found")


async def test_the_openapi_document_lists_the_billing_routes(api: Client) -> None:
    paths = (await api.get("/schema/openapi.json")).json()["paths"]
    assert "/v1/tenants/{tenant_id}/ledger" in paths
    assert "/v1/admin/prices" in paths
