"""Provider secrets at rest: AES-256-GCM under keys from `TALLY_SECRET_KEY`.

`TALLY_SECRET_KEY` is a key ring, `KID:BASE64KEY[,KID:BASE64KEY...]`: the first key encrypts,
every key decrypts, so a rotation adds a new first key, re-encrypts (`tally secrets rotate`) and
later drops the old one. Each ciphertext is stored with the id of the key that sealed it.
Outside production an unset ring falls back to a key generated once in the data folder.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tally.config import Settings

NONCE_BYTES = 12
KEY_BYTES = 32


class SecretKeyError(Exception):
    """The key ring is malformed, or a ciphertext cannot be opened with it."""


class KeyRing:
    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise SecretKeyError("TALLY_SECRET_KEY: the key ring is empty")
        self._keys = {kid: AESGCM(key) for kid, key in keys}
        self.current_kid = keys[0][0]

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        keys: list[tuple[str, bytes]] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            kid, sep, encoded = part.partition(":")
            try:
                key = base64.b64decode(encoded, validate=True) if sep else b""
            except binascii.Error:
                key = b""
            if not kid or len(key) != KEY_BYTES:
                raise SecretKeyError(
                    "TALLY_SECRET_KEY: expected KID:BASE64 entries holding 32-byte keys"
                )
            keys.append((kid, key))
        return cls(keys)

    def encrypt(self, plaintext: bytes, *, context: bytes = b"") -> tuple[str, bytes]:
        """Seal `plaintext` under the current key; `context` is authenticated, not stored."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._keys[self.current_kid].encrypt(nonce, plaintext, context)
        return self.current_kid, nonce + sealed

    def decrypt(self, kid: str, blob: bytes, *, context: bytes = b"") -> bytes:
        aead = self._keys.get(kid)
        if aead is None:
            raise SecretKeyError(f"secret sealed under key {kid!r}, which is not in the ring")
        try:
            return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], context)
        except InvalidTag:
            raise SecretKeyError("secret failed authentication (wrong key or tampered)") from None

    @property
    def key_ids(self) -> list[str]:
        return list(self._keys)


def new_key_entry(kid: str) -> str:
    """A fresh `KID:BASE64` entry for the ring."""
    return f"{kid}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


def load_key_ring(settings: Settings) -> KeyRing:
    if settings.secret_key:
        return KeyRing.parse(settings.secret_key)
    if settings.production:
        raise SecretKeyError("TALLY_SECRET_KEY: required when TALLY_ENV=production")
    # Development: one key generated on first use and kept beside the embedded databases.
    path = Path(settings.data_dir) / "secret.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(new_key_entry("dev1"))
    return KeyRing.parse(path.read_text().strip())
