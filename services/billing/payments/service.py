"""Payments: credit packs, Checkout Sessions, orders, notifications and the webhook inbox.

Checkout: every input is validated before anything is written. Then the tenant's Stripe
customer is made once (key `tally:customer:<tenant>`), the order row is written (`creating`),
and the session is created with key `tally:checkout:<order id>`, so the Stripe client's retries
after a 5xx or a timeout reuse the key and never open a second session for one order.

Webhook intake only verifies, stores (once per Stripe event id) and queues; the ARQ job
`payments.process_stripe_event` does the work (fulfilment.py).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any
from uuid import UUID

from billing.payments import repository as repo
from billing.payments.currency import format_minor, normalise_currency, to_minor
from billing.payments.errors import (
    InvalidPurchase,
    NotPrepaid,
    OrderNotFound,
    PackNotFound,
    PaymentProviderError,
    PaymentsNotConfigured,
    TenantNotFound,
)
from billing.payments.metrics import STRIPE_WEBHOOKS
from billing.payments.repository import OrderRow, PackRow, TenantRow
from billing.payments.runtime import PaymentsRuntime
from billing.payments.schemas import (
    CheckoutCreated,
    CheckoutRequest,
    CreatePackRequest,
    CustomAmount,
    Notification,
    NotificationList,
    Order,
    OrderList,
    Pack,
    PackList,
    WebhookReceived,
)
from billing.payments.signatures import InvalidWebhook, verify_stripe_event, webhook_secrets
from tally.db import Connection
from tally.eventlog import NewEvent, append_events
from tally.events.billing import CreditPackArchived, CreditPackCreated
from tally.events.tenant import Actor
from tally.log import get_logger
from tally.money import EXACT, MoneyError, credits_to_nano, usd_to_cents
from tally.pricebook import DEFAULT_CREDIT_PRICE_USD

log = get_logger(__name__)

PROCESS_STRIPE_EVENT = "payments.process_stripe_event"
# Stripe refuses charges under about half a dollar (or its equivalent).
MIN_CHARGE_MINOR = 50

_CURRENT_CREDIT_PRICE = (
    "SELECT credit_price_usd FROM credit_prices ORDER BY price_version DESC LIMIT 1"
)


def pack_view(row: PackRow) -> Pack:
    return Pack(
        id=row.id,
        name=row.name,
        credits=row.credits,
        price_minor=row.price_minor,
        currency=row.currency,
        price_display=format_minor(row.price_minor, row.currency),
        active=row.active,
        created_at=row.created_at,
    )


def order_view(row: OrderRow) -> Order:
    return Order(
        id=row.id,
        tenant_id=row.tenant_id,
        source=row.source,
        status=row.status,
        credits=row.credits,
        price_minor=row.price_minor,
        currency=row.currency,
        pack_id=row.pack_id,
        stripe_session_id=row.stripe_session_id,
        refunded_minor=row.refunded_minor,
        created_at=row.created_at,
        credited_at=row.credited_at,
        failure_message=row.failure_message,
    )


class PaymentsService:
    def __init__(self, runtime: PaymentsRuntime) -> None:
        self._runtime = runtime
        self._pool = runtime.pool
        self._settings = runtime.settings

    # --- packs --------------------------------------------------------------------------------

    async def create_pack(self, request: CreatePackRequest, actor: Actor) -> Pack:
        """Offer a pack of whole credits for a fixed price (name unique among active packs)."""
        try:
            currency = normalise_currency(request.currency)
            price_minor = to_minor(request.price, currency)
        except MoneyError as exc:
            raise InvalidPurchase(str(exc), param="price") from None
        if price_minor < MIN_CHARGE_MINOR:
            raise InvalidPurchase(
                f"the price must be at least {format_minor(MIN_CHARGE_MINOR, currency)}",
                param="price",
            )
        name = request.name.strip()
        if not name:
            raise InvalidPurchase("the name must not be blank", param="name")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await repo.insert_pack(
                conn, uuid.uuid4(), name, request.credits, price_minor, currency
            )
            if row is None:
                raise InvalidPurchase(f"an active pack is already named {name!r}", param="name")
            await append_events(
                conn,
                [
                    NewEvent(
                        CreditPackCreated(
                            pack_id=str(row.id),
                            name=row.name,
                            credits=row.credits,
                            price_minor=row.price_minor,
                            currency=row.currency,
                            actor=actor,
                        ),
                        f"pack-created:{row.id}",
                    )
                ],
            )
        log.info("credit pack created", pack_id=str(row.id), credits=row.credits)
        return pack_view(row)

    async def list_packs(self, *, include_archived: bool = False) -> PackList:
        """Active packs (all with include_archived) and the custom-amount rule."""
        async with self._pool.acquire() as conn:
            rows = await repo.list_packs(conn, include_archived=include_archived)
            price = await self._credit_price(conn)
        custom = None
        if self._settings.checkout_custom_max_credits > 0:
            custom = CustomAmount(
                min_credits=self._settings.checkout_custom_min_credits,
                max_credits=self._settings.checkout_custom_max_credits,
                credit_price_usd=str(price),
            )
        return PackList(data=[pack_view(r) for r in rows], custom=custom)

    async def archive_pack(self, pack_id: UUID, actor: Actor) -> Pack:
        """Withdraw a pack from sale (past purchases keep referring to it)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await repo.archive_pack(conn, pack_id)
            if row is None:
                raise PackNotFound("no such active pack", param="pack_id")
            await append_events(
                conn,
                [
                    NewEvent(
                        CreditPackArchived(pack_id=str(pack_id), actor=actor),
                        f"pack-archived:{pack_id}",
                    )
                ],
            )
        return pack_view(row)

    async def _credit_price(self, conn: Connection) -> Decimal:
        price = await conn.fetchval(_CURRENT_CREDIT_PRICE)
        return Decimal(price) if price is not None else DEFAULT_CREDIT_PRICE_USD

    # --- checkout -----------------------------------------------------------------------------

    async def resolve_tenant(self, id_or_name: str) -> TenantRow:
        """A tenant by id or (case-insensitive) name, for the operator CLI."""
        async with self._pool.acquire() as conn:
            try:
                tenant = await repo.get_tenant(conn, UUID(id_or_name))
            except ValueError:
                tenant = await repo.get_tenant_by_name(conn, id_or_name)
        if tenant is None:
            raise TenantNotFound(f"no tenant {id_or_name!r}", param="tenant")
        return tenant

    async def create_checkout(
        self, tenant_id: UUID, request: CheckoutRequest, actor: Actor
    ) -> CheckoutCreated:
        """A Stripe Checkout Session for a pack or a custom amount of credits."""
        if (request.pack_id is None) == (request.credits is None):
            raise InvalidPurchase("give exactly one of pack_id and credits", param="pack_id")
        async with self._pool.acquire() as conn:
            tenant = await repo.get_tenant(conn, tenant_id)
            if tenant is None:
                raise TenantNotFound("tenant not found", param="tenant_id")
            if tenant.mode != "prepaid":
                raise NotPrepaid("metered tenants do not buy credits", param="tenant_id")
            pack: PackRow | None = None
            if request.pack_id is not None:
                pack = await repo.get_pack(conn, request.pack_id)
                if pack is None or not pack.active:
                    raise PackNotFound("no such active pack", param="pack_id")
                credits, price_minor, currency = pack.credits, pack.price_minor, pack.currency
            else:
                assert request.credits is not None
                credits = request.credits
                price_minor = self._custom_price(credits, await self._credit_price(conn))
                currency = "usd"
        stripe = self._runtime.stripe()  # 503 here, before anything is written
        customer_id = await self._ensure_customer(tenant)
        order_id = uuid.uuid4()
        async with self._pool.acquire() as conn:
            order = await repo.insert_order(
                conn,
                order_id=order_id,
                tenant_id=tenant.id,
                source="checkout",
                pack_id=pack.id if pack else None,
                credits=credits,
                amount_nano=credits_to_nano(credits),
                price_minor=price_minor,
                currency=currency,
                save_payment_method=request.save_payment_method,
                stripe_customer=customer_id,
                actor=actor,
            )
        params = self._session_params(order, customer_id, pack)
        try:
            session = await stripe.create_checkout_session(
                params, idempotency_key=f"tally:checkout:{order_id}"
            )
        except (PaymentProviderError, PaymentsNotConfigured) as exc:
            async with self._pool.acquire() as conn:
                await repo.set_order_error(conn, order_id, exc.message)
            raise
        if not session.url:
            raise PaymentProviderError("Stripe returned a session without a URL")
        expires_at = datetime.fromtimestamp(session.expires_at, UTC) if session.expires_at else None
        async with self._pool.acquire() as conn:
            await repo.open_checkout_order(conn, order_id, session.id, session.url, expires_at)
        log.info(
            "checkout session created",
            tenant_id=str(tenant.id),
            order_id=str(order_id),
            session_id=session.id,
            credits=credits,
            price_minor=price_minor,
        )
        return CheckoutCreated(
            order_id=order_id,
            session_id=session.id,
            url=session.url,
            tenant_id=tenant.id,
            credits=credits,
            amount_nano=order.amount_nano,
            price_minor=price_minor,
            currency=currency,
            pack_id=pack.id if pack else None,
            expires_at=expires_at,
        )

    def _custom_price(self, credits: int, credit_price_usd: Decimal) -> int:
        low = self._settings.checkout_custom_min_credits
        high = self._settings.checkout_custom_max_credits
        if high == 0:
            raise InvalidPurchase("custom amounts are not offered: choose a pack", param="credits")
        if not low <= credits <= high:
            raise InvalidPurchase(f"credits must be between {low} and {high}", param="credits")
        with localcontext(EXACT):
            cents = usd_to_cents(Decimal(credits) * credit_price_usd)
        if cents < MIN_CHARGE_MINOR:
            raise InvalidPurchase(
                f"{credits} credits cost less than the smallest card payment"
                f" ({format_minor(MIN_CHARGE_MINOR, 'usd')})",
                param="credits",
            )
        return cents

    def _session_params(
        self, order: OrderRow, customer_id: str, pack: PackRow | None
    ) -> dict[str, Any]:
        # Stripe copies neither way between the session and its PaymentIntent: the same
        # metadata goes on both, so refunds and disputes (which reach only the PaymentIntent)
        # find the order too.
        metadata = {
            "tally_order_id": str(order.id),
            "tenant_id": str(order.tenant_id),
            "credits": str(order.credits),
            "source": "checkout",
        }
        if pack is not None:
            metadata["pack_id"] = str(pack.id)
        name = f"{pack.name}: {order.credits} credits" if pack else f"{order.credits} credits"
        intent_data: dict[str, Any] = {
            "metadata": metadata,
            "description": f"Tally credits: {order.credits}",
        }
        if order.save_payment_method:
            intent_data["setup_future_usage"] = "off_session"
        return {
            "mode": "payment",
            "customer": customer_id,
            "client_reference_id": str(order.id),
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": order.currency,
                        "unit_amount": order.price_minor,
                        "product_data": {"name": name},
                    },
                }
            ],
            "metadata": metadata,
            "payment_intent_data": intent_data,
            "success_url": self._settings.stripe_success_url,
            "cancel_url": self._settings.stripe_cancel_url,
        }

    async def _ensure_customer(self, tenant: TenantRow) -> str:
        """The tenant's Stripe customer, created on first use and reused ever after.

        Two first purchases racing both ask Stripe with the same idempotency key (Stripe makes
        one customer and replays it), and the row keeps the first id stored.
        """
        async with self._pool.acquire() as conn:
            existing = await repo.get_customer(conn, tenant.id)
        if existing is not None and existing.customer_id:
            return existing.customer_id
        customer_id = await self._runtime.stripe().create_customer(
            tenant_id=str(tenant.id),
            name=tenant.name,
            email=tenant.billing_email,
            idempotency_key=f"tally:customer:{tenant.id}",
        )
        async with self._pool.acquire() as conn:
            row = await repo.store_customer_id(conn, tenant.id, customer_id)
        assert row.customer_id is not None
        return row.customer_id

    # --- tenant views -------------------------------------------------------------------------

    async def list_orders(self, tenant_id: UUID, limit: int = 50) -> OrderList:
        async with self._pool.acquire() as conn:
            rows = await repo.list_tenant_orders(conn, tenant_id, limit)
        return OrderList(data=[order_view(r) for r in rows])

    async def get_order(self, tenant_id: UUID, order_id: UUID) -> Order:
        async with self._pool.acquire() as conn:
            row = await repo.get_tenant_order(conn, tenant_id, order_id)
        if row is None:
            raise OrderNotFound("order not found", param="order_id")
        return order_view(row)

    async def list_notifications(self, tenant_id: UUID, limit: int = 50) -> NotificationList:
        async with self._pool.acquire() as conn:
            rows = await repo.list_notifications(conn, tenant_id, limit)
        return NotificationList(
            data=[Notification(r.id, r.kind, r.message, r.data, r.created_at) for r in rows]
        )

    # --- webhook intake -----------------------------------------------------------------------

    async def receive_webhook(self, payload: bytes, signature: str | None) -> WebhookReceived:
        """Verify, store once, queue. Refusals raise InvalidWebhook (400) and store nothing."""
        secrets = webhook_secrets(self._settings.stripe_webhook_secret)
        if not secrets:
            log.error("stripe webhook refused: TALLY_STRIPE_WEBHOOK_SECRET is not set")
            raise PaymentsNotConfigured("webhooks are not configured")
        try:
            event = verify_stripe_event(payload, signature, secrets)
        except InvalidWebhook as exc:
            STRIPE_WEBHOOKS.labels("refused").inc()
            log.warning("stripe webhook refused", reason=exc.message, body_bytes=len(payload))
            raise
        async with self._pool.acquire() as conn:
            stored = await repo.insert_webhook_event(
                conn,
                event_id=event.id,
                type_=event.type,
                livemode=event.livemode,
                api_version=event.api_version,
                created=event.created,
                payload=payload.decode(),
            )
        STRIPE_WEBHOOKS.labels("stored" if stored else "duplicate").inc()
        if stored:
            await self._queue(event.id)
        log.info("stripe event received", stripe_event=event.id, type=event.type, new=stored)
        return WebhookReceived(received=True, duplicate=not stored)

    async def _queue(self, event_id: str) -> None:
        enqueue = self._runtime.enqueue
        if enqueue is None:
            return
        try:
            await enqueue(PROCESS_STRIPE_EVENT, (event_id,), f"stripe-event:{event_id}")
        except Exception:
            # The event is stored: the sweeper job finds it, so Stripe still gets its 2xx.
            log.exception("could not queue a stripe event; the sweeper will pick it up")
