"""Verifying Stripe's webhook signature with the `stripe` library itself.

`Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`, each v1 an HMAC-SHA256 of `"<t>.<raw body>"`
under one endpoint secret. During a secret rotation Stripe signs with both secrets and we hold
both (TALLY_STRIPE_WEBHOOK_SECRET is comma-separated): a body passes when any of our secrets
verifies it. Timestamps older than five minutes are refused, so a captured delivery cannot be
replayed later.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import stripe

from billing.payments.errors import PaymentError
from billing.payments.stripe_objects import Event
from tally.errors import InvalidRequest

TOLERANCE_SECONDS = 300


class InvalidWebhook(InvalidRequest, PaymentError):
    """Unsigned, forged, stale or unreadable: refused with 400 and nothing stored."""

    code = "invalid_webhook"


def webhook_secrets(setting: str) -> list[str]:
    return [part.strip() for part in setting.split(",") if part.strip()]


def verify_stripe_event(payload: bytes, header: str | None, secrets: Sequence[str]) -> Event:
    """The event in `payload` if one of `secrets` signed it within the tolerance."""
    if not header:
        raise InvalidWebhook("missing Stripe-Signature header", param="Stripe-Signature")
    failures: list[str] = []
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError as exc:
            failures.append(str(exc.user_message or exc))
            continue
        except UnicodeDecodeError:
            raise InvalidWebhook("the body is not UTF-8") from None
        break
    else:
        # A stale timestamp is only reported by the secret that matched: prefer that message.
        stale = [f for f in failures if "tolerance" in f]
        reason = (stale or failures or ["no webhook secret configured"])[0]
        raise InvalidWebhook(f"invalid Stripe-Signature: {reason}", param="Stripe-Signature")
    try:
        return msgspec.json.decode(payload, type=Event)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidWebhook(f"not a Stripe event: {exc}") from None
