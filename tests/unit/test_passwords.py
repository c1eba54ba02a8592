"""Passwords are hashed with argon2id at RFC 9106's recommended low-memory parameters."""

from __future__ import annotations

import argon2
import pytest

from tally.errors import InvalidRequest
from tenant.auth import passwords


async def test_hashes_are_argon2id_with_rfc9106_low_memory_parameters() -> None:
    hashed = await passwords.hash_password("a long enough password")
    assert hashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert await passwords.verify_password(hashed, "a long enough password")
    assert not await passwords.verify_password(hashed, "a long enough passworD")
    assert not passwords.needs_rehash(hashed)


async def test_weaker_old_hashes_are_flagged_for_rehashing() -> None:
    weak = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("pw")
    assert passwords.needs_rehash(weak)


async def test_accounts_without_a_password_never_match() -> None:
    assert not await passwords.verify_password(None, "")
    assert not await passwords.verify_password(None, "anything at all")
    assert not await passwords.verify_password("not a hash", "anything at all")


@pytest.mark.parametrize(
    ("password", "email"),
    [
        ("short", "a@b.test"),
        ("x" * 1025, "a@b.test"),
        ("Someone@Example.test", "someone@example.test"),
    ],
)
def test_the_password_policy_refuses_weak_passwords(password: str, email: str) -> None:
    with pytest.raises(InvalidRequest):
        passwords.check_password_policy(password, email=email)
