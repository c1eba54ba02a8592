"""Password hashing with argon2id (argon2-cffi), off the event loop and bounded in memory.

Each hash or check takes tens of milliseconds and 64 MiB (RFC 9106 low-memory profile), so it
runs in a worker thread, and a semaphore caps how many run at once: a burst of sign-ins queues
instead of taking the process's memory.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from tally.errors import InvalidRequest

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
_CONCURRENT_HASHES = 4

_hasher = argon2.PasswordHasher.from_parameters(argon2.profiles.RFC_9106_LOW_MEMORY)
_slots: asyncio.Semaphore | None = None


def _semaphore() -> asyncio.Semaphore:
    global _slots
    if _slots is None:
        _slots = asyncio.Semaphore(_CONCURRENT_HASHES)
    return _slots


def check_password_policy(password: str, *, email: str) -> None:
    """Refuse passwords that are too short or too long, or that are the email itself."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(
            f"the password needs at least {MIN_PASSWORD_LENGTH} characters",
            param="password",
            code="weak_password",
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InvalidRequest(
            f"the password is longer than {MAX_PASSWORD_LENGTH} characters", param="password"
        )
    if password.strip().lower() == email.strip().lower():
        raise InvalidRequest(
            "the password must not be the email address", param="password", code="weak_password"
        )


async def hash_password(password: str) -> str:
    """An argon2id PHC string for `password`."""
    async with _semaphore():
        return await asyncio.to_thread(_hasher.hash, password)


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return _hasher.hash("a password nobody has: only here to spend the time of a real check")


async def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether `password` matches; an account without a password (None) spends the same time.

    Checking a dummy hash for unknown or password-less accounts keeps the response time from
    telling an attacker which emails have accounts.
    """
    target = password_hash or _dummy_hash()
    async with _semaphore():
        try:
            ok = await asyncio.to_thread(_hasher.verify, target, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
    return bool(ok) and password_hash is not None


def needs_rehash(password_hash: str) -> bool:
    """True when the hash was made with weaker parameters than today's."""
    return _hasher.check_needs_rehash(password_hash)
