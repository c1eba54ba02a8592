"""Tenant isolation: every tenant-scoped route, called by tenant A on tenant B's objects.

The matrix is built from the app's own route table, so a new tenant-scoped route without an
entry here fails the test instead of going unchecked. A's owner (the strongest tenant role)
must get 404 for anything of B's, whether B's object is addressed under B's path or smuggled
under A's own path, and B's data must be exactly as before.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import asyncpg

from tenant.app import ROUTES, create_app
from tests.integration.tenant.conftest import Api, count_rows

# A valid body for each tenant-scoped route that takes one, so that the answer comes from the
# tenant check and not from validation.
BODIES: dict[tuple[str, str], Any] = {
    ("GET", "/v1/tenants/{tenant_id:uuid}"): None,
    ("PATCH", "/v1/tenants/{tenant_id:uuid}"): {"billing_email": "pwned@evil.test"},
    ("POST", "/v1/tenants/{tenant_id:uuid}/suspend"): {"reason": "pwned"},
    ("POST", "/v1/tenants/{tenant_id:uuid}/reactivate"): None,
    ("GET", "/v1/tenants/{tenant_id:uuid}/members"): None,
    ("PATCH", "/v1/tenants/{tenant_id:uuid}/members/{user_id:uuid}"): {"role": "owner"},
    ("DELETE", "/v1/tenants/{tenant_id:uuid}/members/{user_id:uuid}"): None,
    ("GET", "/v1/tenants/{tenant_id:uuid}/invitations"): None,
    ("POST", "/v1/tenants/{tenant_id:uuid}/invitations"): {
        "email": "spy@evil.test",
        "role": "owner",
    },
    ("DELETE", "/v1/tenants/{tenant_id:uuid}/invitations/{invitation_id:uuid}"): None,
    ("GET", "/v1/tenants/{tenant_id:uuid}/api-keys"): None,
    ("POST", "/v1/tenants/{tenant_id:uuid}/api-keys"): {"name": "stolen"},
    ("GET", "/v1/tenants/{tenant_id:uuid}/api-keys/{key_id:uuid}"): None,
    ("PATCH", "/v1/tenants/{tenant_id:uuid}/api-keys/{key_id:uuid}"): {"rpm_limit": 1},
    ("POST", "/v1/tenants/{tenant_id:uuid}/api-keys/{key_id:uuid}/revoke"): None,
    ("POST", "/v1/tenants/{tenant_id:uuid}/api-keys/{key_id:uuid}/rotate"): {"grace_seconds": 0},
    ("GET", "/v1/tenants/{tenant_id:uuid}/audit-events"): None,
}


def tenant_scoped_routes() -> set[tuple[str, str]]:
    app = create_app()
    found = set()
    for route in app.routes:
        if "{tenant_id" not in route.path:
            continue
        for method in route.methods - {"OPTIONS", "HEAD"}:
            found.add((method, route.path))
    return found


def test_the_matrix_covers_every_tenant_scoped_route() -> None:
    assert ROUTES  # the app exposes its route list
    assert tenant_scoped_routes() == set(BODIES)


async def _state_of(pool: asyncpg.Pool, tenant_id: str) -> dict[str, Any]:
    """Everything of one tenant, to compare before and after the attack."""
    tid = uuid.UUID(tenant_id)
    async with pool.acquire() as conn:
        return {
            "tenant": dict(await conn.fetchrow("SELECT * FROM tenants WHERE id = $1", tid)),
            "keys": [
                dict(r)
                for r in await conn.fetch(
                    "SELECT * FROM api_keys WHERE tenant_id = $1 ORDER BY id", tid
                )
            ],
            "members": [
                dict(r)
                for r in await conn.fetch(
                    "SELECT * FROM tenant_memberships WHERE tenant_id = $1 ORDER BY user_id", tid
                )
            ],
            "invitations": [
                dict(r)
                for r in await conn.fetch(
                    "SELECT * FROM invitations WHERE tenant_id = $1 ORDER BY id", tid
                )
            ],
            "events": await conn.fetchval("SELECT count(*) FROM events WHERE tenant_id = $1", tid),
        }


def _fill(template: str, ids: dict[str, str]) -> str:
    return re.sub(r"\{(\w+):uuid\}", lambda m: ids[m.group(1)], template)


async def test_tenant_a_can_neither_read_nor_change_tenant_b(api: Api, pool: asyncpg.Pool) -> None:
    op = await api.operator()
    a = (await api.new_tenant(op, "Alpha"))["id"]
    b = (await api.new_tenant(op, "Beta"))["id"]
    owner_a = await api.tenant_admin(a, "owner@alpha.test", role="owner")
    await api.tenant_admin(b, "owner@beta.test", role="owner")
    member_b = await api.create_user("member@beta.test")
    await api.add_member(b, member_b, "member")
    key_b = (await api.call("POST", f"/v1/tenants/{b}/api-keys", op, json={"name": "b"})).json()
    invitation_b = (
        await api.call(
            "POST",
            f"/v1/tenants/{b}/invitations",
            op,
            json={"email": "x@beta.test", "role": "member"},
        )
    ).json()["invitation"]
    key_a = (await api.call("POST", f"/v1/tenants/{a}/api-keys", op, json={"name": "a"})).json()
    b_ids = {
        "tenant_id": b,
        "key_id": key_b["id"],
        "user_id": str(member_b),
        "invitation_id": invitation_b["id"],
    }
    # B's objects addressed under A's own path: the object lookups must be tenant-scoped too.
    smuggled = {**b_ids, "tenant_id": a}
    nowhere = {k: str(uuid.uuid4()) for k in b_ids}

    before_b = await _state_of(pool, b)
    before_counts = await count_rows(pool)
    checked = 0
    for (method, template), body in sorted(BODIES.items()):
        kwargs = {"json": body} if body is not None else {}
        # What the route answers for a tenant that does not exist: B must look the same.
        absent = await api.call(method, _fill(template, nowhere), owner_a, **kwargs)
        for ids in (b_ids, smuggled):
            if ids is smuggled and template.count("{") == 1:
                continue  # the route has no second id to smuggle
            response = await api.call(method, _fill(template, ids), owner_a, **kwargs)
            expected = 404 if absent.status_code == 404 else absent.status_code
            assert response.status_code == expected, (
                method,
                template,
                ids is smuggled,
                response.text,
            )
            assert response.status_code in (403, 404), (method, template)
            if response.status_code == 404:
                assert response.json()["error"]["code"] == "not_found"
            checked += 1
        # A's API key is no admin credential anywhere.
        with_key = await api.call(method, _fill(template, b_ids), key_a["key"], **kwargs)
        assert with_key.status_code == 401, (method, template)
    assert checked >= len(BODIES)
    assert await _state_of(pool, b) == before_b
    after_counts = await count_rows(pool)
    assert after_counts == before_counts


async def test_404_for_b_is_indistinguishable_from_a_missing_tenant(api: Api) -> None:
    op = await api.operator()
    a = (await api.new_tenant(op, "Alpha"))["id"]
    b = (await api.new_tenant(op, "Beta"))["id"]
    admin_a = await api.tenant_admin(a, "admin@alpha.test")
    existing = await api.call("GET", f"/v1/tenants/{b}/api-keys", admin_a)
    missing = await api.call("GET", f"/v1/tenants/{uuid.uuid4()}/api-keys", admin_a)
    assert existing.status_code == missing.status_code == 404
    assert existing.json() == missing.json()
