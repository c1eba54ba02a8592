"""Every call Tally makes to Stripe, through the real `stripe` package (async, aiohttp).

Each POST carries an idempotency key derived from our own ids (`tally:<what>:<our id>`), never
a random one: when Stripe answers 5xx or the request times out, the client's retries and any
later retry of the whole job send the same key, so Stripe replays the first outcome instead of
charging twice. `TALLY_STRIPE_API_BASE` points the client at another server (the tests' fake).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import aiohttp
import stripe

from billing.payments.errors import (
    CardDeclined,
    PaymentProviderError,
    PaymentsNotConfigured,
    StripeObjectMissing,
)
from billing.payments.stripe_objects import (
    Charge,
    CheckoutSession,
    PaymentIntent,
    Refund,
    from_stripe,
)
from tally.config import Settings
from tally.log import get_logger

log = get_logger(__name__)

# Telemetry headers describe the previous request to Stripe; nothing we need to send.
stripe.enable_telemetry = False


class StripeGateway:
    """One StripeClient per process (or per job); `close()` releases its HTTP session."""

    def __init__(self, settings: Settings) -> None:
        if not settings.stripe_api_key:
            raise PaymentsNotConfigured("payments are not configured (TALLY_STRIPE_API_KEY)")
        base = {"api": settings.stripe_api_base.rstrip("/")} if settings.stripe_api_base else None
        self._http = stripe.AIOHTTPClient(
            timeout=aiohttp.ClientTimeout(total=settings.stripe_timeout_ms / 1000)
        )
        self._client = stripe.StripeClient(
            settings.stripe_api_key,
            base_addresses=base,  # type: ignore[arg-type]
            max_network_retries=settings.stripe_max_network_retries,
            http_client=self._http,
        )

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def create_customer(
        self, *, tenant_id: str, name: str, email: str | None, idempotency_key: str
    ) -> str:
        params: dict[str, Any] = {"name": name, "metadata": {"tenant_id": tenant_id}}
        if email:
            params["email"] = email
        try:
            customer = await self._client.v1.customers.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            _raise_provider_error("create a customer", exc)
        return str(customer.id)

    async def create_checkout_session(
        self, params: dict[str, Any], *, idempotency_key: str
    ) -> CheckoutSession:
        try:
            session = await self._client.v1.checkout.sessions.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        except stripe.StripeError as exc:
            _raise_provider_error("create a checkout session", exc)
        return from_stripe(session, CheckoutSession)

    async def retrieve_payment_intent(self, payment_intent_id: str) -> PaymentIntent:
        """The PaymentIntent now, with its latest charge expanded (re-fetch: truth over order)."""
        try:
            intent = await self._client.v1.payment_intents.retrieve_async(
                payment_intent_id, params={"expand": ["latest_charge"]}
            )
        except stripe.StripeError as exc:
            _raise_provider_error("fetch a payment intent", exc)
        return from_stripe(intent, PaymentIntent)

    async def retrieve_charge(self, charge_id: str) -> Charge:
        try:
            charge = await self._client.v1.charges.retrieve_async(charge_id)
        except stripe.StripeError as exc:
            _raise_provider_error("fetch a charge", exc)
        return from_stripe(charge, Charge)

    async def retrieve_refund(self, refund_id: str) -> Refund:
        try:
            refund = await self._client.v1.refunds.retrieve_async(refund_id)
        except stripe.StripeError as exc:
            _raise_provider_error("fetch a refund", exc)
        return from_stripe(refund, Refund)

    async def charge_off_session(
        self,
        *,
        amount_minor: int,
        currency: str,
        customer: str,
        payment_method: str,
        metadata: dict[str, str],
        description: str,
        idempotency_key: str,
    ) -> PaymentIntent:
        """Charge a saved card without the customer present (auto top-up).

        A declined card is HTTP 402 `card_error`: raised as CardDeclined, with the PaymentIntent.
        """
        params: dict[str, Any] = {
            "amount": amount_minor,
            "currency": currency,
            "customer": customer,
            "payment_method": payment_method,
            "off_session": True,
            "confirm": True,
            "description": description,
            "metadata": metadata,
            "expand": ["latest_charge"],
        }
        try:
            intent = await self._client.v1.payment_intents.create_async(
                params=params,  # type: ignore[arg-type]
                options={"idempotency_key": idempotency_key},
            )
        except stripe.CardError as exc:
            error = exc.error
            raise CardDeclined(
                (error.message if error and error.message else None) or "the card was declined",
                code=exc.code,
                decline_code=getattr(error, "decline_code", None) if error else None,
                payment_intent=_error_payment_intent(exc),
            ) from None
        except stripe.StripeError as exc:
            _raise_provider_error("charge a saved card", exc)
        return from_stripe(intent, PaymentIntent)

    async def refunds_of_charge(self, charge_id: str) -> list[Refund]:
        """Every refund of one charge, oldest first."""
        found: list[Refund] = []
        try:
            page = await self._client.v1.refunds.list_async(
                params={"charge": charge_id, "limit": 100}
            )
            async for refund in page.auto_paging_iter():
                found.append(from_stripe(refund, Refund))
        except stripe.StripeError as exc:
            _raise_provider_error("list refunds", exc)
        return sorted(found, key=lambda r: (r.created, r.id))

    async def payment_intents_created(self, gte: int, lt: int) -> AsyncIterator[PaymentIntent]:
        """PaymentIntents created in [gte, lt) (unix seconds), every page."""
        try:
            page = await self._client.v1.payment_intents.list_async(
                params={"created": {"gte": gte, "lt": lt}, "limit": 100}
            )
            async for intent in page.auto_paging_iter():
                yield from_stripe(intent, PaymentIntent)
        except stripe.StripeError as exc:
            _raise_provider_error("list payment intents", exc)

    async def refunds_created(self, gte: int, lt: int) -> AsyncIterator[Refund]:
        """Refunds created in [gte, lt) (unix seconds), every page."""
        try:
            page = await self._client.v1.refunds.list_async(
                params={"created": {"gte": gte, "lt": lt}, "limit": 100}
            )
            async for refund in page.auto_paging_iter():
                yield from_stripe(refund, Refund)
        except stripe.StripeError as exc:
            _raise_provider_error("list refunds", exc)


def _error_payment_intent(exc: stripe.StripeError) -> str | None:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    intent = body.get("error", {}).get("payment_intent")
    if isinstance(intent, dict):
        found = intent.get("id")
        return found if isinstance(found, str) else None
    return intent if isinstance(intent, str) else None


def _raise_provider_error(action: str, exc: stripe.StripeError) -> NoReturn:
    log.warning(
        "stripe request failed",
        action=action,
        error=type(exc).__name__,
        http_status=exc.http_status,
        stripe_code=exc.code,
        detail=exc.user_message or str(exc)[:300],
    )
    if isinstance(exc, stripe.AuthenticationError):
        raise PaymentsNotConfigured("Stripe refused the API key (TALLY_STRIPE_API_KEY)") from None
    if isinstance(exc, stripe.InvalidRequestError) and exc.http_status == 404:
        raise StripeObjectMissing(f"Stripe has no such object ({action})") from None
    raise PaymentProviderError(f"Stripe could not {action}; try again later") from None
