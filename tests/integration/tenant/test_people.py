"""People: accounts, invitations, memberships and the rules on who may grant which role."""

from __future__ import annotations

from uuid import UUID

import asyncpg
import jwt
import pytest

from tests.integration.tenant.conftest import PASSWORD, Api, count_rows, events_of

NEW_PASSWORD = "a fresh long password"


async def _tenant_with_owner(api: Api) -> tuple[str, str, str]:
    """(operator token, tenant id, owner token)."""
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    owner = await api.tenant_admin(tenant["id"], "owner@acme.test", role="owner")
    return op, tenant["id"], owner


async def _invite(api: Api, tenant_id: str, token: str, email: str, role: str) -> object:
    return await api.call(
        "POST", f"/v1/tenants/{tenant_id}/invitations", token, json={"email": email, "role": role}
    )


async def test_an_invitation_creates_the_account_and_membership_on_acceptance(
    api: Api, pool: asyncpg.Pool
) -> None:
    _, tenant_id, owner = await _tenant_with_owner(api)
    response = await _invite(api, tenant_id, owner, "New.Person@Acme.test", "member")
    assert response.status_code == 201
    issued = response.json()
    token = issued["token"]
    assert token.startswith("inv_")
    assert issued["invitation"]["email"] == "new.person@acme.test"
    async with pool.acquire() as conn:
        stored = await conn.fetchrow("SELECT * FROM invitations")
    assert token.encode() not in bytes(stored["token_hash"])

    no_password = await api.call("POST", "/v1/invitations/accept", json={"token": token})
    assert no_password.status_code == 400
    weak = await api.call("POST", "/v1/invitations/accept", json={"token": token, "password": "x"})
    assert weak.status_code == 400
    accepted = await api.call(
        "POST", "/v1/invitations/accept", json={"token": token, "password": NEW_PASSWORD}
    )
    assert accepted.status_code == 200, accepted.text
    claims = jwt.decode(accepted.json()["access_token"], options={"verify_signature": False})
    assert claims["tenants"] == {tenant_id: "member"}
    await api.sign_in("new.person@acme.test", NEW_PASSWORD)

    reused = await api.call(
        "POST", "/v1/invitations/accept", json={"token": token, "password": NEW_PASSWORD}
    )
    assert reused.status_code == 410
    assert reused.json()["error"]["code"] == "invitation_expired"
    unknown = await api.call(
        "POST", "/v1/invitations/accept", json={"token": "inv_nope", "password": NEW_PASSWORD}
    )
    assert unknown.status_code == 404
    listed = await api.call("GET", f"/v1/tenants/{tenant_id}/invitations", owner)
    assert listed.json()["data"][0]["status"] == "accepted"
    assert [e["role"] for e in await events_of(pool, "UserInvited")] == ["member"]
    changes = await events_of(pool, "MembershipChanged")
    assert (changes[-1]["role_before"], changes[-1]["role_after"]) == (None, "member")


async def test_expired_and_revoked_invitations_cannot_be_accepted(
    api: Api, pool: asyncpg.Pool
) -> None:
    _, tenant_id, owner = await _tenant_with_owner(api)
    expired = (await _invite(api, tenant_id, owner, "late@acme.test", "member")).json()
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE invitations SET expires_at = now() - interval '1 second' WHERE id = $1",
            UUID(expired["invitation"]["id"]),
        )
    late = await api.call(
        "POST", "/v1/invitations/accept", json={"token": expired["token"], "password": NEW_PASSWORD}
    )
    assert late.status_code == 410

    revoked = (await _invite(api, tenant_id, owner, "gone@acme.test", "member")).json()
    path = f"/v1/tenants/{tenant_id}/invitations/{revoked['invitation']['id']}"
    assert (await api.call("DELETE", path, owner)).status_code == 204
    assert (await api.call("DELETE", path, owner)).status_code == 409
    before = await count_rows(pool)
    refused = await api.call(
        "POST", "/v1/invitations/accept", json={"token": revoked["token"], "password": NEW_PASSWORD}
    )
    assert refused.status_code == 404
    assert await count_rows(pool) == before


async def test_an_existing_account_accepts_with_its_own_password(
    api: Api, pool: asyncpg.Pool
) -> None:
    _, tenant_id, owner = await _tenant_with_owner(api)
    await api.create_user("known@acme.test")
    token = (await _invite(api, tenant_id, owner, "known@acme.test", "admin")).json()["token"]
    before = await count_rows(pool)
    wrong = await api.call(
        "POST", "/v1/invitations/accept", json={"token": token, "password": "not the password"}
    )
    assert wrong.status_code == 401
    assert await count_rows(pool) == before
    ok = await api.call(
        "POST", "/v1/invitations/accept", json={"token": token, "password": PASSWORD}
    )
    assert ok.status_code == 200
    claims = jwt.decode(ok.json()["access_token"], options={"verify_signature": False})
    assert claims["tenants"] == {tenant_id: "admin"}


async def test_who_may_invite_and_grant_which_role(api: Api) -> None:
    op, tenant_id, owner = await _tenant_with_owner(api)
    admin = await api.tenant_admin(tenant_id, "admin@acme.test", role="admin")
    member = await api.tenant_admin(tenant_id, "member@acme.test", role="member")
    assert (await _invite(api, tenant_id, member, "x@acme.test", "member")).status_code == 403
    assert (await _invite(api, tenant_id, admin, "x@acme.test", "owner")).status_code == 403
    assert (await _invite(api, tenant_id, admin, "x@acme.test", "admin")).status_code == 201
    assert (await _invite(api, tenant_id, owner, "y@acme.test", "owner")).status_code == 201
    assert (await _invite(api, tenant_id, op, "z@acme.test", "owner")).status_code == 201
    for role in ["operator", "superuser", ""]:
        assert (await _invite(api, tenant_id, owner, "w@acme.test", role)).status_code == 400
    assert (await _invite(api, tenant_id, owner, "not-an-email", "member")).status_code == 400


async def test_member_roles_change_and_the_last_owner_stays(api: Api, pool: asyncpg.Pool) -> None:
    _, tenant_id, owner = await _tenant_with_owner(api)
    admin = await api.tenant_admin(tenant_id, "admin@acme.test", role="admin")
    member_id = await api.create_user("member@acme.test")
    await api.add_member(tenant_id, member_id, "member")
    members = (await api.call("GET", f"/v1/tenants/{tenant_id}/members", admin)).json()["data"]
    owner_id = next(m["user_id"] for m in members if m["role"] == "owner")
    base = f"/v1/tenants/{tenant_id}/members"

    promoted = await api.call("PATCH", f"{base}/{member_id}", admin, json={"role": "admin"})
    assert promoted.status_code == 200
    assert promoted.json()["role"] == "admin"
    assert (
        await api.call("PATCH", f"{base}/{member_id}", admin, json={"role": "owner"})
    ).status_code == 403
    assert (
        await api.call("PATCH", f"{base}/{owner_id}", admin, json={"role": "member"})
    ).status_code == 403
    assert (await api.call("DELETE", f"{base}/{owner_id}", admin)).status_code == 403
    last = await api.call("PATCH", f"{base}/{owner_id}", owner, json={"role": "admin"})
    assert last.status_code == 409
    assert last.json()["error"]["code"] == "last_owner"
    assert (
        await api.call("PATCH", f"{base}/{member_id}", admin, json={"role": "boss"})
    ).status_code == 400
    assert (await api.call("DELETE", f"{base}/{member_id}", admin)).status_code == 204
    assert (await api.call("DELETE", f"{base}/{member_id}", admin)).status_code == 404
    roles = [
        (e["role_before"], e["role_after"]) for e in await events_of(pool, "MembershipChanged")
    ]
    assert roles[-2:] == [("member", "admin"), ("admin", None)]


async def test_operators_manage_accounts_and_platform_invitations(
    api: Api, pool: asyncpg.Pool
) -> None:
    op = await api.operator()
    created = await api.call(
        "POST",
        "/v1/users",
        op,
        json={
            "email": "fin@platform.test",
            "password": NEW_PASSWORD,
            "platform_roles": ["finance"],
        },
    )
    assert created.status_code == 201
    assert created.json()["platform_roles"] == ["finance"]
    duplicate = await api.call("POST", "/v1/users", op, json={"email": "FIN@platform.test"})
    assert duplicate.status_code == 409
    assert (
        await api.call(
            "POST", "/v1/users", op, json={"email": "x@y.test", "platform_roles": ["root"]}
        )
    ).status_code == 400

    invited = await api.call(
        "POST", "/v1/invitations", op, json={"email": "op2@platform.test", "role": "operator"}
    )
    assert invited.status_code == 201
    session = (
        await api.call(
            "POST",
            "/v1/invitations/accept",
            json={"token": invited.json()["token"], "password": NEW_PASSWORD},
        )
    ).json()
    assert jwt.decode(session["access_token"], options={"verify_signature": False})["roles"] == [
        "operator"
    ]
    assert (
        await api.call("POST", "/v1/invitations", op, json={"email": "t@x.test", "role": "admin"})
    ).status_code == 400

    users = (await api.call("GET", "/v1/users", op, params={"search": "platform.test"})).json()[
        "data"
    ]
    assert {u["email"] for u in users} == {
        "op@platform.test",
        "fin@platform.test",
        "op2@platform.test",
    }
    finance_id = created.json()["id"]
    changed = await api.call(
        "PATCH", f"/v1/users/{finance_id}", op, json={"platform_roles": ["finance", "operator"]}
    )
    assert changed.json()["platform_roles"] == ["finance", "operator"]
    (update,) = await events_of(pool, "UserUpdated")
    assert update["before"] == {"platform_roles": ["finance"]}


@pytest.mark.parametrize("path", ["/v1/users", "/v1/invitations"])
async def test_people_admin_is_for_operators(api: Api, path: str) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    owner = await api.tenant_admin(tenant["id"], "owner@acme.test", role="owner")
    response = await api.call("POST", path, owner, json={"email": "x@y.test", "role": "operator"})
    assert response.status_code == 403


async def test_the_last_active_operator_stays(api: Api) -> None:
    op = await api.operator()
    me = (await api.call("GET", "/v1/me", op)).json()["user"]["id"]
    for body in [{"status": "disabled"}, {"platform_roles": ["finance"]}]:
        refused = await api.call("PATCH", f"/v1/users/{me}", op, json=body)
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "last_operator"
    second = await api.create_user("op2@platform.test", roles=["operator"])
    assert (
        await api.call("PATCH", f"/v1/users/{me}", op, json={"platform_roles": []})
    ).status_code == 200
    assert (
        await api.call("PATCH", f"/v1/users/{second}", op, json={"status": "disabled"})
    ).status_code == 409
