"""Single sign-on against a real (fake) OpenID Connect issuer over HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import asyncpg
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from litestar.testing import AsyncTestClient

from tally.config import Settings
from tenant.app import create_app
from tests.fakes.oidc import CLIENT_ID, FakeIssuer
from tests.integration.tenant.conftest import PASSWORD, Api, events_of, tenant_settings


@pytest.fixture
def issuer() -> Iterator[FakeIssuer]:
    fake = FakeIssuer().start()
    yield fake
    fake.stop()


@pytest.fixture
def settings(issuer: FakeIssuer) -> Settings:
    return tenant_settings(
        oidc_issuer=issuer.url, oidc_client_id=CLIENT_ID, oidc_jwks_refresh_min_seconds=0
    )


async def _oidc(api: Api, id_token: str) -> object:
    return await api.call("POST", "/v1/auth/oidc", json={"id_token": id_token})


async def test_an_invited_person_signs_in_with_sso_and_joins_the_tenant(
    api: Api, issuer: FakeIssuer, pool: asyncpg.Pool
) -> None:
    op = await api.operator()
    tenant = await api.new_tenant(op, "Acme")
    invite = await api.call(
        "POST",
        f"/v1/tenants/{tenant['id']}/invitations",
        op,
        json={"email": "dana@acme.test", "role": "admin"},
    )
    assert invite.status_code == 201
    response = await _oidc(api, issuer.id_token("Dana@Acme.test", subject="idp-123"))
    assert response.status_code == 200, response.text
    session = response.json()
    assert session["user"]["email"] == "dana@acme.test"
    assert session["user"]["sso_linked"] is True
    assert session["user"]["has_password"] is False
    claims = jwt.decode(session["access_token"], options={"verify_signature": False})
    assert claims["tenants"] == {tenant["id"]: "admin"}
    (created,) = [e for e in await events_of(pool, "UserCreated") if e["via"] == "oidc"]
    assert created["email"] == "dana@acme.test"
    (accepted,) = await events_of(pool, "InvitationAccepted")
    assert accepted["tenant_id"] == tenant["id"]
    assert (await events_of(pool, "UserSignedIn"))[-1]["method"] == "oidc"
    # The invitation is used up; the next sign-in finds the linked account.
    again = await _oidc(api, issuer.id_token("dana@acme.test", subject="idp-123"))
    assert again.status_code == 200
    assert len([e for e in await events_of(pool, "UserCreated") if e["via"] == "oidc"]) == 1
    # A password sign-in is impossible for an SSO-only account.
    no_password = await api.call(
        "POST", "/v1/auth/sign-in", json={"email": "dana@acme.test", "password": PASSWORD}
    )
    assert no_password.status_code == 401


async def test_an_existing_account_is_linked_once_and_then_only_to_that_subject(
    api: Api, issuer: FakeIssuer
) -> None:
    await api.create_user("erin@acme.test")
    first = await _oidc(api, issuer.id_token("erin@acme.test", subject="erin-at-idp"))
    assert first.status_code == 200
    assert first.json()["user"]["sso_linked"] is True
    impostor = await _oidc(api, issuer.id_token("erin@acme.test", subject="someone-else"))
    assert impostor.status_code == 401
    assert impostor.json()["error"]["code"] == "sso_identity_mismatch"


async def test_an_unknown_email_without_an_invitation_is_refused(
    api: Api, issuer: FakeIssuer, pool: asyncpg.Pool
) -> None:
    response = await _oidc(api, issuer.id_token("stranger@else.test"))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "no_account"
    assert await events_of(pool, "UserCreated") == []


async def test_bad_id_tokens_are_401(api: Api, issuer: FakeIssuer) -> None:
    await api.create_user("erin@acme.test")
    foreign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad_tokens = {
        "wrong audience": issuer.id_token("erin@acme.test", audience="another-app"),
        "wrong issuer": issuer.id_token("erin@acme.test", issuer="https://evil.test"),
        "expired": issuer.id_token("erin@acme.test", expires_in=-120),
        "unverified email": issuer.id_token("erin@acme.test", email_verified=False),
        "foreign key, known kid": issuer.id_token("erin@acme.test", key=foreign_key),
        "unknown kid": issuer.id_token("erin@acme.test", kid="nobody", key=foreign_key),
        "two audiences, not ours as azp": issuer.id_token(
            "erin@acme.test", audience=[CLIENT_ID, "other"], azp="other"
        ),
        "hs256": jwt.encode(
            {"iss": issuer.url, "aud": CLIENT_ID, "sub": "x", "email": "erin@acme.test"},
            "secret",
            algorithm="HS256",
            headers={"kid": issuer.current_kid},
        ),
        "alg none": jwt.encode(
            {"iss": issuer.url, "aud": CLIENT_ID, "sub": "x", "email": "erin@acme.test"},
            None,
            algorithm="none",
        ),
        "garbage": "not.a.token",
    }
    for name, token in bad_tokens.items():
        response = await _oidc(api, token)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"]["type"] == "authentication_error", name


async def test_keys_are_cached_and_refetched_when_the_issuer_rotates(
    api: Api, issuer: FakeIssuer
) -> None:
    await api.create_user("erin@acme.test")
    for _ in range(3):
        assert (await _oidc(api, issuer.id_token("erin@acme.test"))).status_code == 200
    assert (issuer.discovery_requests, issuer.jwks_requests) == (1, 1)

    issuer.rotate_keys()  # the old key leaves the JWKS; tokens now carry a new kid
    assert (await _oidc(api, issuer.id_token("erin@acme.test"))).status_code == 200
    assert issuer.jwks_requests == 2
    assert (await _oidc(api, issuer.id_token("erin@acme.test"))).status_code == 200
    assert issuer.jwks_requests == 2


async def test_unknown_kids_do_not_make_tally_hammer_the_issuer(
    api: Api, issuer: FakeIssuer
) -> None:
    settings = tenant_settings(
        oidc_issuer=issuer.url, oidc_client_id=CLIENT_ID, oidc_jwks_refresh_min_seconds=3600
    )
    await api.create_user("erin@acme.test")
    async with AsyncTestClient(create_app(settings)) as client:
        limited = Api(client, api.runtime)
        assert (await _oidc(limited, issuer.id_token("erin@acme.test"))).status_code == 200
        fetched = issuer.jwks_requests
        forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        for i in range(5):
            token = issuer.id_token("erin@acme.test", kid=f"random-{i}", key=forged)
            assert (await _oidc(limited, token)).status_code == 401
        assert issuer.jwks_requests == fetched


async def test_an_unreachable_issuer_is_503_and_sso_off_is_404(
    api: Api, issuer: FakeIssuer
) -> None:
    await api.create_user("erin@acme.test")
    token = issuer.id_token("erin@acme.test")
    issuer.stop()
    down = await _oidc(api, token)
    assert down.status_code == 503
    assert down.json()["error"]["code"] == "service_unavailable"

    async with AsyncTestClient(create_app(tenant_settings())) as client:
        off = await client.post("/v1/auth/oidc", json={"id_token": token})
        assert off.status_code == 404
        assert off.json()["error"]["code"] == "sso_not_configured"
