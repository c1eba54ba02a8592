"""Webhook signatures: HMAC-SHA256 over "<timestamp>.<body>", sent as `t=<unix>,v1=<hex>`.

The same scheme as Stripe's: the timestamp is signed with the body, so a receiver that checks
it is recent (5 minutes by default) rejects replays of an old delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SIGNATURE_HEADER = "Tally-Signature"
EVENT_ID_HEADER = "Tally-Event-Id"
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """A webhook signature is missing, malformed, wrong or too old."""


def new_signing_secret() -> str:
    """A fresh per-tenant signing secret (shown to the tenant once)."""
    return "whsec_" + secrets.token_urlsafe(32)


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The `Tally-Signature` header value for `body` sent at `timestamp`."""
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(
    header: str,
    body: bytes,
    secret: str,
    *,
    now: int,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
) -> int:
    """Check a `Tally-Signature` header as a receiver should; returns its timestamp."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise SignatureError("malformed signature header")
    expected = _digest(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise SignatureError("signature does not match")
    if abs(now - timestamp) > tolerance:
        raise SignatureError("signature timestamp outside the tolerance")
    return timestamp
