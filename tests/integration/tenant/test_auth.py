"""Signing in: passwords, throttling, sessions with rotating refresh tokens, token attacks."""

from __future__ import annotations

import base64
import json
import time
import uuid

import asyncpg
import jwt
import pytest
import redis.asyncio as redis

from tally.auth import Principal, SigningKeys, issue_access_token, new_signing_key_entry
from tally.config import Settings
from tests.integration.tenant.conftest import PASSWORD, Api, events_of


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


async def test_sign_in_issues_an_access_token_carrying_roles_and_a_refresh_token(
    api: Api, pool: asyncpg.Pool
) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    user_id = await api.create_user("Admin@Acme.test")
    await api.add_member(tenant["id"], user_id, "admin")

    session = await api.sign_in("admin@ACME.test")
    assert session["token_type"] == "Bearer"
    assert session["refresh_token"].startswith("rt_")
    assert session["user"]["email"] == "admin@acme.test"
    claims = jwt.decode(session["access_token"], options={"verify_signature": False})
    assert claims["sub"] == str(user_id)
    assert claims["tenants"] == {tenant["id"]: "admin"}
    assert claims["exp"] - claims["iat"] == session["expires_in"]
    me = await api.call("GET", "/v1/me", session["access_token"])
    assert me.json()["tenants"] == [
        {"tenant_id": tenant["id"], "tenant_name": "Acme", "role": "admin"}
    ]
    signed_in = await events_of(pool, "UserSignedIn")
    assert signed_in[-1]["user_id"] == str(user_id)
    assert signed_in[-1]["method"] == "password"
    async with pool.acquire() as conn:
        stored = await conn.fetchval(
            "SELECT count(*) FROM refresh_tokens WHERE user_id = $1", user_id
        )
        raw = await conn.fetchval(
            "SELECT count(*) FROM refresh_tokens WHERE token_hash::text LIKE $1",
            f"%{session['refresh_token']}%",
        )
    assert (stored, raw) == (1, 0)


async def test_wrong_passwords_and_unknown_emails_get_the_same_401(api: Api) -> None:
    await api.create_user("alice@acme.test")
    wrong = await api.call(
        "POST", "/v1/auth/sign-in", json={"email": "alice@acme.test", "password": "nope nope nope"}
    )
    unknown = await api.call(
        "POST", "/v1/auth/sign-in", json={"email": "bob@acme.test", "password": "nope nope nope"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["error"]["code"] == "invalid_credentials"


async def test_an_account_is_locked_after_repeated_failures_with_retry_after(
    api: Api, redis_client: redis.Redis
) -> None:
    # settings: 3 free failures per account, then 30 s doubling.
    await api.create_user("alice@acme.test")
    body = {"email": "alice@acme.test", "password": "guess guess guess"}
    for _ in range(3):
        assert (await api.call("POST", "/v1/auth/sign-in", json=body)).status_code == 401
    fourth = await api.call("POST", "/v1/auth/sign-in", json=body)
    assert fourth.status_code == 401  # the failure that starts the lockout is still checked
    locked = await api.call(
        "POST", "/v1/auth/sign-in", json={"email": "alice@acme.test", "password": PASSWORD}
    )
    assert locked.status_code == 429
    assert locked.json()["error"]["code"] == "too_many_attempts"
    assert locked.json()["error"]["type"] == "rate_limit_error"
    assert 1 <= int(locked.headers["retry-after"]) <= 30
    # Another account from the same address is not locked by this one.
    await api.create_user("carol@acme.test")
    assert (
        await api.call(
            "POST", "/v1/auth/sign-in", json={"email": "carol@acme.test", "password": PASSWORD}
        )
    ).status_code == 200
    # The lock lifts when it runs out (simulated by expiring the key), and success clears it.
    await redis_client.delete(
        *[k async for k in redis_client.scan_iter("tally:signin:account:*:lock")]
    )
    ok = await api.call(
        "POST", "/v1/auth/sign-in", json={"email": "alice@acme.test", "password": PASSWORD}
    )
    assert ok.status_code == 200
    # Alice's counter is gone after her success: one more failure does not lock her.
    assert (await api.call("POST", "/v1/auth/sign-in", json=body)).status_code == 401
    ok_again = await api.call(
        "POST", "/v1/auth/sign-in", json={"email": "alice@acme.test", "password": PASSWORD}
    )
    assert ok_again.status_code == 200


async def test_lockouts_double_with_each_further_failure(
    api: Api, redis_client: redis.Redis
) -> None:
    await api.create_user("alice@acme.test")
    body = {"email": "alice@acme.test", "password": "guess guess guess"}
    lock_ttls = []
    for _ in range(6):
        await redis_client.delete(
            *[k async for k in redis_client.scan_iter("tally:signin:*:lock")] or ["none"]
        )
        await api.call("POST", "/v1/auth/sign-in", json=body)
        keys = [k async for k in redis_client.scan_iter("tally:signin:account:*:lock")]
        lock_ttls.append(await redis_client.pttl(keys[0]) if keys else 0)
    assert lock_ttls[:3] == [0, 0, 0]
    # 30 s, 60 s, 120 s: each further failure doubles the lock.
    assert 29_000 < lock_ttls[3] <= 30_000
    assert 59_000 < lock_ttls[4] <= 60_000
    assert 119_000 < lock_ttls[5] <= 120_000


async def test_an_address_guessing_across_many_accounts_is_locked(api: Api) -> None:
    # settings: 8 free failures per address; every email below is different.
    statuses = []
    for i in range(10):
        response = await api.call(
            "POST",
            "/v1/auth/sign-in",
            json={"email": f"user{i}@acme.test", "password": "guess guess guess"},
        )
        statuses.append(response.status_code)
    assert statuses[:9] == [401] * 9
    assert statuses[9] == 429


async def test_refresh_rotates_and_a_replayed_refresh_token_revokes_the_session(
    api: Api, pool: asyncpg.Pool
) -> None:
    await api.create_user("alice@acme.test")
    first = await api.sign_in("alice@acme.test")
    second = await api.call(
        "POST", "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert second.status_code == 200
    rotated = second.json()
    assert rotated["refresh_token"] != first["refresh_token"]

    replay = await api.call(
        "POST", "/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    )
    assert replay.status_code == 401
    assert replay.json()["error"]["code"] == "invalid_refresh_token"
    # The legitimate holder's newer token died with the family.
    newer = await api.call(
        "POST", "/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}
    )
    assert newer.status_code == 401
    (revoked,) = await events_of(pool, "SessionRevoked")
    assert revoked["reason"] == "reuse_detected"
    # Other sessions of the same person live on.
    other = await api.sign_in("alice@acme.test")
    assert (
        await api.call("POST", "/v1/auth/refresh", json={"refresh_token": other["refresh_token"]})
    ).status_code == 200


async def test_logout_ends_the_session(api: Api) -> None:
    await api.create_user("alice@acme.test")
    session = await api.sign_in("alice@acme.test")
    out = await api.call(
        "POST", "/v1/auth/logout", json={"refresh_token": session["refresh_token"]}
    )
    assert out.status_code == 204
    again = await api.call(
        "POST", "/v1/auth/refresh", json={"refresh_token": session["refresh_token"]}
    )
    assert again.status_code == 401
    unknown = await api.call("POST", "/v1/auth/logout", json={"refresh_token": "rt_unknown"})
    assert unknown.status_code == 204


async def test_refreshed_tokens_carry_current_roles(api: Api) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    user_id = await api.create_user("alice@acme.test")
    session = await api.sign_in("alice@acme.test")
    assert (
        await api.call("GET", f"/v1/tenants/{tenant['id']}", session["access_token"])
    ).status_code == 404
    await api.add_member(tenant["id"], user_id, "member")
    refreshed = (
        await api.call("POST", "/v1/auth/refresh", json={"refresh_token": session["refresh_token"]})
    ).json()
    assert (
        await api.call("GET", f"/v1/tenants/{tenant['id']}", refreshed["access_token"])
    ).status_code == 200


async def test_disabling_a_user_ends_their_sessions_and_sign_ins(
    api: Api, pool: asyncpg.Pool
) -> None:
    op = await api.operator()
    user_id = await api.create_user("alice@acme.test")
    session = await api.sign_in("alice@acme.test")
    disabled = await api.call("PATCH", f"/v1/users/{user_id}", op, json={"status": "disabled"})
    assert disabled.json()["status"] == "disabled"
    assert (
        await api.call("POST", "/v1/auth/refresh", json={"refresh_token": session["refresh_token"]})
    ).status_code == 401
    refused = await api.call(
        "POST", "/v1/auth/sign-in", json={"email": "alice@acme.test", "password": PASSWORD}
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "account_disabled"
    assert [e["reason"] for e in await events_of(pool, "SessionRevoked")] == ["user_disabled"]


async def test_changing_ones_password(api: Api, pool: asyncpg.Pool) -> None:
    await api.create_user("alice@acme.test")
    session = await api.sign_in("alice@acme.test")
    token = session["access_token"]
    wrong = await api.call(
        "POST",
        "/v1/me/password",
        token,
        json={"current_password": "not it at all", "new_password": "a brand new password"},
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "wrong_password"
    weak = await api.call(
        "POST",
        "/v1/me/password",
        token,
        json={"current_password": PASSWORD, "new_password": "short"},
    )
    assert weak.status_code == 400
    assert weak.json()["error"]["code"] == "weak_password"
    ok = await api.call(
        "POST",
        "/v1/me/password",
        token,
        json={"current_password": PASSWORD, "new_password": "a brand new password"},
    )
    assert ok.status_code == 204
    assert (
        await api.call("POST", "/v1/auth/refresh", json={"refresh_token": session["refresh_token"]})
    ).status_code == 401
    assert (
        await api.call(
            "POST", "/v1/auth/sign-in", json={"email": "alice@acme.test", "password": PASSWORD}
        )
    ).status_code == 401
    await api.sign_in("alice@acme.test", "a brand new password")
    assert len(await events_of(pool, "PasswordChanged")) == 1


# --- access-token attacks: every route but sign-in refuses these with 401 -------------------


async def _victim(api: Api) -> tuple[str, dict[str, object]]:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    claims = jwt.decode(op, options={"verify_signature": False})
    return tenant["id"], claims


async def test_alg_none_is_401(api: Api) -> None:
    tenant_id, claims = await _victim(api)
    forged = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': 'test1'})}.{_b64(claims)}."
    response = await api.call("GET", f"/v1/tenants/{tenant_id}", forged)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


async def test_a_token_signed_by_another_key_is_401(api: Api) -> None:
    tenant_id, claims = await _victim(api)
    impostor = SigningKeys.parse(new_signing_key_entry("test1"))  # same kid, other key
    assert (
        await api.call("GET", f"/v1/tenants/{tenant_id}", impostor.sign(claims))
    ).status_code == 401
    hs256 = jwt.encode(claims, "secret", algorithm="HS256", headers={"kid": "test1"})
    assert (await api.call("GET", f"/v1/tenants/{tenant_id}", hs256)).status_code == 401
    unknown_kid = SigningKeys.parse(new_signing_key_entry("other")).sign(claims)
    assert (await api.call("GET", f"/v1/tenants/{tenant_id}", unknown_kid)).status_code == 401


@pytest.mark.parametrize("claim", ["aud", "iss"])
async def test_a_wrong_audience_or_issuer_is_401(api: Api, settings: Settings, claim: str) -> None:
    tenant_id, claims = await _victim(api)
    keys = SigningKeys.parse(settings.jwt_keys)
    assert (await api.call("GET", f"/v1/tenants/{tenant_id}", keys.sign(claims))).status_code == 200
    tampered = {**claims, claim: "someone-else"}
    assert (
        await api.call("GET", f"/v1/tenants/{tenant_id}", keys.sign(tampered))
    ).status_code == 401


async def test_an_expired_token_is_401(api: Api, settings: Settings) -> None:
    tenant_id, claims = await _victim(api)
    keys = SigningKeys.parse(settings.jwt_keys)
    expired = keys.sign({**claims, "iat": int(time.time()) - 3600, "exp": int(time.time()) - 5})
    response = await api.call("GET", f"/v1/tenants/{tenant_id}", expired)
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


async def test_missing_or_malformed_authorization_is_401(api: Api) -> None:
    tenant_id, _ = await _victim(api)
    for headers in [
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer a.b.c"},
    ]:
        response = await api.client.get(f"/v1/tenants/{tenant_id}", headers=headers)
        assert response.status_code == 401, headers


async def test_an_api_key_is_not_an_admin_credential(api: Api) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    key = (await api.call("POST", f"/v1/tenants/{tenant['id']}/api-keys", op, json={})).json()[
        "key"
    ]
    response = await api.call("GET", f"/v1/tenants/{tenant['id']}/api-keys", key)
    assert response.status_code == 401


async def test_a_token_with_forged_roles_is_refused(api: Api, settings: Settings) -> None:
    # Roles live in the signed token; changing them breaks the signature.
    await _victim(api)
    user = Principal(user_id=uuid.uuid4(), email="x@y.test")
    token = issue_access_token(SigningKeys.parse(settings.jwt_keys), settings, user)
    header, _, signature = token.split(".")
    forged_payload = _b64(
        {**jwt.decode(token, options={"verify_signature": False}), "roles": ["operator"]}
    )
    forged = f"{header}.{forged_payload}.{signature}"
    assert (await api.call("GET", "/v1/tenants", forged)).status_code == 401
    assert (await api.call("GET", "/v1/tenants", token)).status_code == 403


async def test_racing_refreshes_of_one_token_yield_one_session_then_revoke_it(api: Api) -> None:
    import asyncio

    from tally.errors import TallyError
    from tenant.auth.service import auth_service

    await api.create_user("alice@acme.test")
    session = await api.sign_in("alice@acme.test")
    results = await asyncio.gather(
        *(auth_service.refresh(api.runtime, session["refresh_token"]) for _ in range(4)),
        return_exceptions=True,
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    assert len(winners) == 1
    assert all(isinstance(r, TallyError) for r in results if isinstance(r, BaseException))
    # A replay was seen, so the family is revoked: even the winner's new token is dead.
    for winner in winners:
        again = await api.call(
            "POST", "/v1/auth/refresh", json={"refresh_token": winner.refresh_token}
        )
        assert again.status_code == 401
