from __future__ import annotations

import base64
import json
import time
import uuid

import jwt
import pytest

from tally.auth import (
    AuthError,
    Principal,
    SigningKeys,
    issue_access_token,
    new_signing_key_entry,
    verify_access_token,
)
from tally.config import load_settings
from tally.errors import Forbidden, NotFound

SETTINGS = load_settings({})
OLD, NEW = new_signing_key_entry("old"), new_signing_key_entry("new")
TENANT = uuid.uuid4()
ALICE = Principal(user_id=uuid.uuid4(), email="a@example.com", tenants={TENANT: "admin"})


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_token_verifies_under_every_key_of_the_ring_after_rotation() -> None:
    token = issue_access_token(SigningKeys.parse(OLD), SETTINGS, ALICE)
    rotated = SigningKeys.parse(f"{NEW},{OLD}")
    assert verify_access_token(rotated, SETTINGS, token) == ALICE
    fresh = issue_access_token(rotated, SETTINGS, ALICE)
    assert jwt.get_unverified_header(fresh)["kid"] == "new"


def test_alg_none_is_refused() -> None:
    claims = {
        "sub": str(ALICE.user_id),
        "iss": "tally",
        "aud": "tally-api",
        "iat": int(time.time()),
        "exp": int(time.time()) + 60,
    }
    token = f"{b64({'alg': 'none', 'kid': 'old', 'typ': 'JWT'})}.{b64(claims)}."
    with pytest.raises(AuthError, match="disallowed algorithm"):
        verify_access_token(SigningKeys.parse(OLD), SETTINGS, token)


def test_hs256_signed_with_the_public_key_is_refused() -> None:
    token = jwt.encode(
        {"sub": str(ALICE.user_id)},
        "an-attacker-chosen-hmac-secret-of-32b",
        algorithm="HS256",
        headers={"kid": "old"},
    )
    with pytest.raises(AuthError):
        verify_access_token(SigningKeys.parse(OLD), SETTINGS, token)


def test_a_token_from_a_foreign_key_with_a_known_kid_is_refused() -> None:
    forged = issue_access_token(SigningKeys.parse(new_signing_key_entry("old")), SETTINGS, ALICE)
    with pytest.raises(AuthError, match="invalid access token"):
        verify_access_token(SigningKeys.parse(OLD), SETTINGS, forged)


@pytest.mark.parametrize("variable", ["TALLY_JWT_AUDIENCE", "TALLY_JWT_ISSUER"])
def test_wrong_audience_or_issuer_is_refused(variable: str) -> None:
    other = load_settings({variable: "someone-else"})
    token = issue_access_token(SigningKeys.parse(OLD), other, ALICE)
    with pytest.raises(AuthError):
        verify_access_token(SigningKeys.parse(OLD), SETTINGS, token)


def test_an_expired_token_is_refused() -> None:
    short = load_settings({"TALLY_ACCESS_TOKEN_TTL_SECONDS": "30"})
    keys = SigningKeys.parse(OLD)
    token = issue_access_token(keys, short, ALICE)
    claims = jwt.decode(token, options={"verify_signature": False})
    claims["exp"] = int(time.time()) - 5
    expired = keys.sign(claims)
    with pytest.raises(AuthError, match="expired"):
        verify_access_token(keys, SETTINGS, expired)


def test_tenant_access_hides_other_tenants_and_checks_roles() -> None:
    ALICE.require_tenant(TENANT, "admin")
    with pytest.raises(Forbidden):
        ALICE.require_tenant(TENANT, "owner")
    with pytest.raises(NotFound):
        ALICE.require_tenant(uuid.uuid4())
    operator = Principal(user_id=uuid.uuid4(), email="o@x", platform_roles=frozenset({"operator"}))
    operator.require_tenant(uuid.uuid4(), "owner")
    finance = Principal(user_id=uuid.uuid4(), email="f@x", platform_roles=frozenset({"finance"}))
    finance.require_tenant(uuid.uuid4())
    with pytest.raises(NotFound):
        finance.require_tenant(uuid.uuid4(), "admin")
