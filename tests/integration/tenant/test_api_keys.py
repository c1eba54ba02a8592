"""API keys: shown once, stored as a hash, listed by prefix, revoked and rotated with the
gateway's cache told after each change commits."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from tests.integration.tenant.conftest import Api, InvalidationWatch, count_rows, events_of


async def _setup(api: Api) -> tuple[str, str, str]:
    """(operator token, tenant id, tenant admin token)."""
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    admin = await api.tenant_admin(tenant["id"], "admin@acme.test")
    return op, tenant["id"], admin


async def _key_row(pool: asyncpg.Pool, key_id: str) -> Any:
    async with pool.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM api_keys WHERE id = $1", UUID(key_id))


async def test_a_key_is_shown_once_and_stored_only_as_its_hash(
    api: Api, pool: asyncpg.Pool
) -> None:
    _, tenant_id, admin = await _setup(api)
    expires = (datetime.now(UTC) + timedelta(days=30)).isoformat()
    response = await api.call(
        "POST",
        f"/v1/tenants/{tenant_id}/api-keys",
        admin,
        json={
            "name": "production",
            "expires_at": expires,
            "allowed_models": ["gpt-4o", "claude-x", "gpt-4o"],
            "rpm_limit": 60,
            "tpm_limit": 100_000,
            "spend_cap_nano": 5 * 10**9,
        },
    )
    assert response.status_code == 201, response.text
    issued = response.json()
    key = issued["key"]
    assert key.startswith("tk_")
    assert len(key) >= 3 + 43  # 32 random bytes, url-safe base64
    assert issued["prefix"] == key[:12]
    assert issued["allowed_models"] == ["gpt-4o", "claude-x"]
    assert issued["status"] == "active"

    row = await _key_row(pool, issued["id"])
    assert bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
    assert key not in str(dict(row))
    listed = await api.call("GET", f"/v1/tenants/{tenant_id}/api-keys", admin)
    assert key not in listed.text
    assert listed.json()["data"][0]["prefix"] == issued["prefix"]
    one = await api.call("GET", f"/v1/tenants/{tenant_id}/api-keys/{issued['id']}", admin)
    assert "key" not in one.json()
    (created,) = await events_of(pool, "ApiKeyCreated")
    assert created["prefix"] == issued["prefix"]
    assert key not in str(created)


async def test_members_read_keys_but_only_admins_and_operators_issue_them(api: Api) -> None:
    op, tenant_id, _ = await _setup(api)
    member = await api.tenant_admin(tenant_id, "m@acme.test", role="member")
    path = f"/v1/tenants/{tenant_id}/api-keys"
    assert (await api.call("POST", path, member, json={})).status_code == 403
    assert (await api.call("GET", path, member)).status_code == 200
    by_operator = await api.call("POST", path, op, json={})
    assert by_operator.status_code == 201
    assert by_operator.json()["name"] == "default"


async def test_revoking_a_key_reaches_the_gateway_after_commit(
    api: Api, pool: asyncpg.Pool, invalidations: InvalidationWatch
) -> None:
    _, tenant_id, admin = await _setup(api)
    key_id = (await api.call("POST", f"/v1/tenants/{tenant_id}/api-keys", admin, json={})).json()[
        "id"
    ]

    async def revoked_in_the_database() -> None:
        assert (await _key_row(pool, key_id))["status"] == "revoked"

    response = await api.call("POST", f"/v1/tenants/{tenant_id}/api-keys/{key_id}/revoke", admin)
    assert response.status_code == 200
    assert response.json()["status"] == "revoked"
    assert response.json()["revoked_at"] is not None
    await invalidations.wait_for("api_key", key_id, on_receipt=revoked_in_the_database)

    again = await api.call("POST", f"/v1/tenants/{tenant_id}/api-keys/{key_id}/revoke", admin)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_revoked"
    change = await api.call(
        "PATCH", f"/v1/tenants/{tenant_id}/api-keys/{key_id}", admin, json={"name": "x"}
    )
    assert change.status_code == 409
    listed = await api.call("GET", f"/v1/tenants/{tenant_id}/api-keys", admin)
    assert listed.json()["data"] == []
    with_revoked = await api.call(
        "GET", f"/v1/tenants/{tenant_id}/api-keys", admin, params={"include_revoked": "true"}
    )
    assert [k["id"] for k in with_revoked.json()["data"]] == [key_id]
    assert len(await events_of(pool, "ApiKeyRevoked")) == 1


async def test_changing_expiry_and_limits_is_an_event_and_an_invalidation(
    api: Api, pool: asyncpg.Pool, invalidations: InvalidationWatch
) -> None:
    _, tenant_id, admin = await _setup(api)
    key = (
        await api.call("POST", f"/v1/tenants/{tenant_id}/api-keys", admin, json={"rpm_limit": 10})
    ).json()
    path = f"/v1/tenants/{tenant_id}/api-keys/{key['id']}"
    soon = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0)
    response = await api.call(
        "PATCH",
        path,
        admin,
        json={"expires_at": soon.isoformat(), "rpm_limit": None, "allowed_models": ["m1"]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["rpm_limit"] is None
    assert datetime.fromisoformat(response.json()["expires_at"]) == soon
    await invalidations.wait_for("api_key", key["id"])
    (event,) = await events_of(pool, "ApiKeyUpdated")
    assert event["before"] == {"expires_at": None, "rpm_limit": 10, "allowed_models": None}
    assert event["after"]["rpm_limit"] is None
    assert event["after"]["allowed_models"] == ["m1"]

    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    before = await count_rows(pool)
    for body in [
        {"expires_at": past},
        {"expires_at": "2030-01-01T00:00:00"},  # no timezone
        {"rpm_limit": 0},
        {"rpm_limit": "fast"},
        {"allowed_models": []},
        {"allowed_models": ["bad model name"]},
        {"spend_cap_nano": -5},
        {"spend_cap_nano": 1.5},
        {"name": ""},
        {"key": "tk_mine"},
    ]:
        bad = await api.call("PATCH", path, admin, json=body)
        assert bad.status_code == 400, (body, bad.text)
    assert await count_rows(pool) == before


async def test_rotation_issues_a_new_key_and_retires_the_old_one(
    api: Api, pool: asyncpg.Pool, invalidations: InvalidationWatch
) -> None:
    _, tenant_id, admin = await _setup(api)
    old = (
        await api.call(
            "POST",
            f"/v1/tenants/{tenant_id}/api-keys",
            admin,
            json={"name": "ci", "allowed_models": ["m1"], "tpm_limit": 5000},
        )
    ).json()
    base = f"/v1/tenants/{tenant_id}/api-keys"

    rotated = await api.call("POST", f"{base}/{old['id']}/rotate", admin)
    assert rotated.status_code == 201
    new = rotated.json()
    assert new["key"] != old["key"]
    assert (new["name"], new["allowed_models"], new["tpm_limit"]) == ("ci", ["m1"], 5000)
    await invalidations.wait_for("api_key", old["id"])
    old_row = await _key_row(pool, old["id"])
    assert old_row["status"] == "revoked"
    assert old_row["replaced_by"] == UUID(new["id"])
    (event,) = await events_of(pool, "ApiKeyRotated")
    assert (event["key_id"], event["new_key_id"]) == (old["id"], new["id"])
    assert event["old_key_expires_at"] is None

    # With a grace period the old key keeps working until then.
    graced = await api.call(
        "POST", f"{base}/{new['id']}/rotate", admin, json={"grace_seconds": 3600}
    )
    newest = graced.json()
    row = await _key_row(pool, new["id"])
    assert row["status"] == "active"
    assert row["expires_at"] is not None
    assert timedelta(minutes=59) < row["expires_at"] - datetime.now(UTC) <= timedelta(hours=1)
    assert row["replaced_by"] == UUID(newest["id"])

    for body in [{"grace_seconds": -1}, {"grace_seconds": 31 * 86_400}]:
        assert (
            await api.call("POST", f"{base}/{newest['id']}/rotate", admin, json=body)
        ).status_code == 400
    assert (await api.call("POST", f"{base}/{old['id']}/rotate", admin)).status_code == 409


async def test_a_suspended_tenant_gets_no_new_keys(api: Api, pool: asyncpg.Pool) -> None:
    op, tenant_id, admin = await _setup(api)
    key = (await api.call("POST", f"/v1/tenants/{tenant_id}/api-keys", admin, json={})).json()
    await api.call("POST", f"/v1/tenants/{tenant_id}/suspend", op)
    before = await count_rows(pool)
    refused = await api.call("POST", f"/v1/tenants/{tenant_id}/api-keys", admin, json={})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "tenant_suspended"
    rotate = await api.call("POST", f"/v1/tenants/{tenant_id}/api-keys/{key['id']}/rotate", admin)
    assert rotate.status_code == 409
    assert await count_rows(pool) == before


@pytest.mark.parametrize(
    "body",
    [
        {"name": 1},
        {"expires_at": "tomorrow"},
        {"allowed_models": "gpt-4o"},
        {"allowed_models": ["x"] * 201},
        {"rpm_limit": 10**10},
        {"tpm_limit": -1},
        {"spend_cap_nano": "5"},
        {"status": "active"},
        [],
    ],
)
async def test_malformed_key_requests_are_400_and_write_nothing(
    api: Api, pool: asyncpg.Pool, body: Any
) -> None:
    _, tenant_id, admin = await _setup(api)
    before = await count_rows(pool)
    response = await api.call("POST", f"/v1/tenants/{tenant_id}/api-keys", admin, json=body)
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert await count_rows(pool) == before


async def test_keys_page_newest_first(api: Api) -> None:
    _, tenant_id, admin = await _setup(api)
    path = f"/v1/tenants/{tenant_id}/api-keys"
    ids = [
        (await api.call("POST", path, admin, json={"name": f"k{i}"})).json()["id"] for i in range(5)
    ]
    first = (await api.call("GET", path, admin, params={"limit": 2})).json()
    second = (
        await api.call("GET", path, admin, params={"limit": 2, "cursor": first["next_cursor"]})
    ).json()
    third = (
        await api.call("GET", path, admin, params={"limit": 2, "cursor": second["next_cursor"]})
    ).json()
    listed = [k["id"] for page in (first, second, third) for k in page["data"]]
    assert listed == list(reversed(ids))
    assert third["next_cursor"] is None
