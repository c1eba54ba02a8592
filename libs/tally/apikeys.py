"""API keys: `tk_` + 256 random bits, shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import secrets

import msgspec

KEY_PREFIX = "tk_"
VISIBLE_CHARS = 12  # "tk_" and 9 characters: enough to tell keys apart, useless to an attacker


class IssuedKey(msgspec.Struct, frozen=True):
    key: str
    prefix: str
    key_hash: bytes


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def issue_api_key() -> IssuedKey:
    key = KEY_PREFIX + secrets.token_urlsafe(32)  # 32 bytes = 256 bits of randomness
    return IssuedKey(key=key, prefix=key[:VISIBLE_CHARS], key_hash=hash_api_key(key))
