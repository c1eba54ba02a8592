"""The payments error family; tally.http maps each to the OpenAI-shaped error body."""

from __future__ import annotations

from tally.errors import Conflict, InvalidRequest, NotFound, TallyError


class PaymentError(TallyError):
    """Base of every payments error."""


class InvalidPurchase(InvalidRequest, PaymentError):
    """The purchase asked for is not allowed (unknown pack, amount outside the bounds...)."""

    code = "invalid_purchase"


class PackNotFound(NotFound, PaymentError):
    code = "pack_not_found"


class TenantNotFound(NotFound, PaymentError):
    code = "tenant_not_found"


class NotPrepaid(Conflict, PaymentError):
    """Metered tenants do not hold credits, so they cannot buy any."""

    code = "tenant_not_prepaid"


class NoSavedPaymentMethod(Conflict, PaymentError):
    """Auto top-up needs a card saved by an earlier checkout (save_payment_method=true)."""

    code = "no_saved_payment_method"


class PaymentsNotConfigured(PaymentError):
    """TALLY_STRIPE_API_KEY (or the webhook secret) is not set."""

    status_code = 503
    error_type = "server_error"
    code = "payments_not_configured"


class PaymentProviderError(PaymentError):
    """Stripe did not answer, or refused a request Tally made (after the client's retries)."""

    status_code = 502
    error_type = "server_error"
    code = "payment_provider_error"


class StripeObjectMissing(PaymentProviderError):
    """Stripe answered 404 for an object we asked about (reconciliation checks for this)."""

    code = "stripe_object_missing"


class OrderNotFound(NotFound, PaymentError):
    code = "order_not_found"


class RunNotFound(NotFound, PaymentError):
    code = "reconciliation_run_not_found"


class CardDeclined(PaymentError):
    """An off-session charge failed (HTTP 402 `card_error` from Stripe)."""

    status_code = 402
    error_type = "card_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None,
        decline_code: str | None,
        payment_intent: str | None,
    ) -> None:
        super().__init__(message, code=code or "card_declined")
        self.decline_code = decline_code
        self.payment_intent = payment_intent
