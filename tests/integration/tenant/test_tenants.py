"""Tenants: creation with starter credits, updates, margins, suspension, listing, bad input."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID, uuid5

import asyncpg
import msgspec
import pytest

from tally.config import Settings
from tests.integration.tenant.conftest import (
    Api,
    InvalidationWatch,
    count_rows,
    events_of,
    tenant_settings,
)


@pytest.fixture
def settings() -> Settings:
    return tenant_settings(starter_credits="5.5", starter_credits_expire_days=30)


async def test_creating_a_tenant_appends_its_event_and_grants_starter_and_manual_credits(
    api: Api, pool: asyncpg.Pool
) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "  Acme   Corp ", mode="metered", credits="100.25")
    assert tenant["name"] == "Acme Corp"
    assert tenant["mode"] == "metered"
    assert tenant["status"] == "active"
    tenant_id = UUID(tenant["id"])

    created = await events_of(pool, "TenantCreated")
    assert [e["tenant_id"] for e in created] == [tenant["id"]]
    assert created[0]["actor"]["kind"] == "user"
    grants = await events_of(pool, "CreditsGranted")
    by_kind = {g["kind"]: g for g in grants}
    assert by_kind["starter"]["amount_nano"] == 5_500_000_000
    assert by_kind["starter"]["expires_at"] is not None
    assert by_kind["starter"]["grant_id"] == str(uuid5(tenant_id, "starter-credits"))
    assert by_kind["starter"]["_key"] == f"tenant:{tenant_id}:starter-credits"
    assert by_kind["manual"]["amount_nano"] == 100_250_000_000
    assert by_kind["manual"]["expires_at"] is None
    assert by_kind["manual"]["_key"] == f"tenant:{tenant_id}:initial-credits"
    assert {g["_tenant_id"] for g in grants} == {tenant_id}


async def test_no_starter_grant_when_the_setting_is_zero(pool: asyncpg.Pool, api: Api) -> None:
    # This module's settings grant starter credits; a zero setting must grant none.
    from litestar.testing import AsyncTestClient

    from tenant.app import create_app

    async with AsyncTestClient(create_app(tenant_settings(starter_credits="0"))) as client:
        other = Api(client, api.runtime)
        op = await other.operator()
        await other.new_tenant(op, "NoStarter")
    assert await events_of(pool, "CreditsGranted") == []


async def test_duplicate_names_are_409_case_insensitively_and_write_nothing(
    api: Api, pool: asyncpg.Pool
) -> None:
    op = await api.operator()
    await api.new_tenant(op, "Acme")
    before = await count_rows(pool)
    response = await api.call("POST", "/v1/tenants", op, json={"name": "ACME", "credits": "5"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "name_taken"
    assert response.json()["error"]["param"] == "name"
    assert await count_rows(pool) == before


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": 42}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"name": "bad\nname"}, "name"),
        ({"name": "A", "mode": "postpaid"}, "mode"),
        ({"name": "A", "credits": 5}, "credits"),
        ({"name": "A", "credits": "-5"}, "credits"),
        ({"name": "A", "credits": "1.0000000001"}, "credits"),
        ({"name": "A", "billing_email": "not-an-email"}, "billing_email"),
        ({"name": "A", "country": "usa"}, "country"),
        ({"name": "A", "budget_cap_nano": -1}, "budget_cap_nano"),
        ({"name": "A", "rpm_limit": 0}, "rpm_limit"),
        ({"name": "A", "address": {"street": "x"}}, "address"),
        ({"name": "A", "surprise": True}, "data"),
    ],
)
async def test_malformed_tenant_bodies_are_400_naming_the_field_and_write_nothing(
    api: Api, pool: asyncpg.Pool, body: dict[str, object], param: str
) -> None:
    op = await api.operator()
    before = await count_rows(pool)
    response = await api.call("POST", "/v1/tenants", op, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_request"
    assert param in (error["param"] or "") or param in error["message"]
    assert await count_rows(pool) == before


async def test_non_json_and_oversized_bodies_are_refused(api: Api, pool: asyncpg.Pool) -> None:
    op = await api.operator()
    before = await count_rows(pool)
    broken = await api.call(
        "POST",
        "/v1/tenants",
        op,
        content=b"{name: oops",
        headers={"content-type": "application/json"},
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_request"
    empty = await api.call("POST", "/v1/tenants", op)
    assert empty.status_code == 400
    huge = await api.call(
        "POST",
        "/v1/tenants",
        op,
        content=b'{"name": "' + b"x" * (5 * 1024 * 1024) + b'"}',
        headers={"content-type": "application/json"},
    )
    assert huge.status_code == 413
    assert huge.json()["error"]["code"] == "request_too_large"
    assert await count_rows(pool) == before


async def test_operators_update_any_field_and_each_change_is_an_event_with_before_and_after(
    api: Api, pool: asyncpg.Pool, invalidations: InvalidationWatch
) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    path = f"/v1/tenants/{tenant['id']}"
    response = await api.call(
        "PATCH",
        path,
        op,
        json={
            "name": "Acme Inc",
            "mode": "metered",
            "billing_email": "billing@acme.test",
            "tax_id": "DE123",
            "country": "DE",
            "address": {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115"},
            "budget_cap_nano": 10**12,
            "rpm_limit": 600,
        },
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["name"] == "Acme Inc"
    assert updated["address"] == {"line1": "1 Main St", "city": "Berlin", "postal_code": "10115"}
    await invalidations.wait_for("tenant", tenant["id"])

    (event,) = await events_of(pool, "TenantUpdated")
    assert event["before"]["name"] == "Acme"
    assert event["after"]["name"] == "Acme Inc"
    assert event["before"]["mode"] == "prepaid"
    assert event["after"]["mode"] == "metered"
    assert event["after"]["rpm_limit"] == 600
    assert "tenant_id" not in event["after"]

    # Clearing with null, and an unchanged PATCH adds no event.
    cleared = await api.call("PATCH", path, op, json={"tax_id": None})
    assert cleared.json()["tax_id"] is None
    again = await api.call("PATCH", path, op, json={"tax_id": None, "country": "DE"})
    assert again.status_code == 200
    assert len(await events_of(pool, "TenantUpdated")) == 2


async def test_tenant_admins_may_change_only_the_billing_profile(
    api: Api, pool: asyncpg.Pool
) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    admin = await api.tenant_admin(tenant["id"], "admin@acme.test")
    member = await api.tenant_admin(tenant["id"], "member@acme.test", role="member")
    path = f"/v1/tenants/{tenant['id']}"

    ok = await api.call("PATCH", path, admin, json={"billing_email": "ap@acme.test"})
    assert ok.status_code == 200
    for field, value in [("mode", "metered"), ("margin_override_pct", "5"), ("name", "Mine")]:
        refused = await api.call("PATCH", path, admin, json={field: value})
        assert refused.status_code == 403, field
        assert refused.json()["error"]["param"] == field
    by_member = await api.call("PATCH", path, member, json={"billing_email": "x@acme.test"})
    assert by_member.status_code == 403
    read = await api.call("GET", path, member)
    assert read.json()["billing_email"] == "ap@acme.test"
    assert len(await events_of(pool, "TenantUpdated")) == 1


async def test_a_margin_override_takes_a_new_price_book_version_and_invalidates_prices(
    api: Api, pool: asyncpg.Pool, invalidations: InvalidationWatch
) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    path = f"/v1/tenants/{tenant['id']}"
    first = await api.call("PATCH", path, op, json={"margin_override_pct": "12.50"})
    assert first.status_code == 200
    assert Decimal(first.json()["margin_override_pct"]) == Decimal("12.5")
    await invalidations.wait_for("prices", "*")
    removed = await api.call("PATCH", path, op, json={"margin_override_pct": None})
    assert removed.json()["margin_override_pct"] is None

    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT price_version, margin_pct FROM tenant_margins WHERE tenant_id = $1"
            " ORDER BY price_version",
            UUID(tenant["id"]),
        )
    assert [r["margin_pct"] for r in rows] == [Decimal("12.5"), None]
    assert rows[0]["price_version"] < rows[1]["price_version"]
    overrides = await events_of(pool, "TenantMarginOverridden")
    assert [e["price_version"] for e in overrides] == [r["price_version"] for r in rows]
    assert [e["margin_pct"] for e in overrides] == ["12.5", None]

    for bad in ["-100", "20000", "1.1234567", "abc"]:
        response = await api.call("PATCH", path, op, json={"margin_override_pct": bad})
        assert response.status_code == 400, bad
    assert len(await events_of(pool, "TenantMarginOverridden")) == 2


async def test_suspend_and_reactivate(
    api: Api, pool: asyncpg.Pool, invalidations: InvalidationWatch
) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    path = f"/v1/tenants/{tenant['id']}"

    async def tenant_is_suspended_already() -> None:
        # The message is published after the commit, so the reader sees the new state.
        async with pool.acquire() as conn:
            status = await conn.fetchval(
                "SELECT status FROM tenants WHERE id = $1", UUID(tenant["id"])
            )
        assert status == "suspended"

    suspended = await api.call("POST", f"{path}/suspend", op, json={"reason": "unpaid invoices"})
    assert suspended.status_code == 200
    assert suspended.json()["status"] == "suspended"
    assert suspended.json()["suspended_reason"] == "unpaid invoices"
    await invalidations.wait_for("tenant", tenant["id"], on_receipt=tenant_is_suspended_already)
    twice = await api.call("POST", f"{path}/suspend", op)
    assert twice.status_code == 409
    assert twice.json()["error"]["code"] == "already_suspended"

    back = await api.call("POST", f"{path}/reactivate", op)
    assert back.json()["status"] == "active"
    assert back.json()["suspended_reason"] is None
    assert (await api.call("POST", f"{path}/reactivate", op)).status_code == 409
    types = [e["_key"].split(":")[0] for e in await events_of(pool, "TenantSuspended")]
    assert types == ["TenantSuspended"]
    assert len(await events_of(pool, "TenantReactivated")) == 1

    admin = await api.tenant_admin(tenant["id"], "admin@acme.test")
    assert (await api.call("POST", f"{path}/suspend", admin)).status_code == 403


async def test_listing_pages_with_cursors_and_filters(api: Api) -> None:
    op = await api.operator()
    names = [f"Tenant {i:02d}" for i in range(7)]
    ids = [(await api.new_tenant(op, name))["id"] for name in names]
    await api.call("POST", f"/v1/tenants/{ids[3]}/suspend", op)
    await api.call("PATCH", f"/v1/tenants/{ids[5]}", op, json={"billing_email": "z@100%.test"})

    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, object] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await api.call("GET", "/v1/tenants", op, params=params)).json()
        seen += [t["id"] for t in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    def names_of(response: object) -> list[str]:
        return [t["name"] for t in response.json()["data"]]  # type: ignore[attr-defined]

    assert names_of(await api.call("GET", "/v1/tenants", op, params={"search": "nt 0"})) == list(
        reversed(names)
    )
    assert names_of(await api.call("GET", "/v1/tenants", op, params={"search": "03"})) == [
        "Tenant 03"
    ]
    # LIKE wildcards in the search are literal characters.
    assert names_of(await api.call("GET", "/v1/tenants", op, params={"search": "100%"})) == [
        "Tenant 05"
    ]
    assert names_of(await api.call("GET", "/v1/tenants", op, params={"search": "%"})) == [
        "Tenant 05"
    ]
    assert names_of(await api.call("GET", "/v1/tenants", op, params={"search": ids[1]})) == [
        "Tenant 01"
    ]
    suspended = await api.call("GET", "/v1/tenants", op, params={"status": "suspended"})
    assert names_of(suspended) == ["Tenant 03"]

    for params in [
        {"limit": 0},
        {"limit": 201},
        {"limit": "ten"},
        {"status": "gone"},
        {"mode": "free"},
        {"cursor": "not-a-cursor"},
        {"cursor": "WzEyXQ"},
    ]:
        response = await api.call("GET", "/v1/tenants", op, params=params)
        assert response.status_code == 400, (params, response.text)
        assert response.json()["error"]["param"] in ("limit", "status", "mode", "cursor")


async def test_listing_is_for_operators_and_finance(api: Api) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    await api.create_user("fin@platform.test", roles=["finance"])
    finance = await api.token_for("fin@platform.test")
    admin = await api.tenant_admin(tenant["id"], "admin@acme.test")
    assert (await api.call("GET", "/v1/tenants", finance)).status_code == 200
    assert (await api.call("GET", f"/v1/tenants/{tenant['id']}", finance)).status_code == 200
    assert (await api.call("GET", "/v1/tenants", admin)).status_code == 403
    assert (await api.call("POST", "/v1/tenants", finance, json={"name": "X"})).status_code == 403
    assert (await api.call("GET", "/v1/tenants")).status_code == 401


async def test_unknown_and_malformed_tenant_ids_are_404(api: Api) -> None:
    op = await api.operator()
    for path in ["/v1/tenants/0b0b0b0b-0000-4000-8000-000000000000", "/v1/tenants/nope"]:
        response = await api.call("GET", path, op)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    patch = await api.call(
        "PATCH", "/v1/tenants/0b0b0b0b-0000-4000-8000-000000000000", op, json={"tax_id": "x"}
    )
    assert patch.status_code == 404


def test_the_tenant_schema_refuses_floats_for_money() -> None:
    from tenant.tenants.schemas import TenantCreate

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"name": "A", "credits": 1.5}, TenantCreate)


async def test_concurrent_creates_of_one_name_make_one_tenant(api: Api, pool: asyncpg.Pool) -> None:
    import asyncio

    from tally.errors import Conflict
    from tally.events.tenant import Actor
    from tenant.tenants.schemas import TenantCreate
    from tenant.tenants.service import tenant_service

    async def create(name: str) -> object:
        async with api.runtime.unit(Actor(kind="cli", id="race")) as uow:
            return await tenant_service.create(uow, TenantCreate(name=name), api.runtime.settings)

    results = await asyncio.gather(
        *(create(name) for name in ["Racer", "racer", "RACER", "Racer "]), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM tenants") == 1
    assert len(await events_of(pool, "TenantCreated")) == 1
    # The winner's starter grant (this module grants 5.5 credits) exists once.
    assert len(await events_of(pool, "CreditsGranted")) == 1
