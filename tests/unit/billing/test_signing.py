"""Webhook signatures: what a receiver checks."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from billing.alerts.signing import SignatureError, sign, verify


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    header = sign("whsec_x", 1_700_000_000, b'{"a":1}')
    expected = hmac.new(b"whsec_x", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"
    assert verify(header, b'{"a":1}', "whsec_x", now=1_700_000_100) == 1_700_000_000


@pytest.mark.parametrize(
    ("body", "secret", "now", "message"),
    [
        (b'{"a":2}', "whsec_x", 1_700_000_000, "does not match"),
        (b'{"a":1}', "whsec_y", 1_700_000_000, "does not match"),
        (b'{"a":1}', "whsec_x", 1_700_000_301, "tolerance"),
    ],
)
def test_a_tampered_foreign_or_old_delivery_is_rejected(
    body: bytes, secret: str, now: int, message: str
) -> None:
    header = sign("whsec_x", 1_700_000_000, b'{"a":1}')
    with pytest.raises(SignatureError, match=message):
        verify(header, body, secret, now=now)


def test_a_malformed_header_is_rejected() -> None:
    with pytest.raises(SignatureError, match="malformed"):
        verify("v1=abc", b"", "whsec_x", now=0)
