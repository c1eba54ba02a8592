"""Auto top-up: charge the saved card off-session when available credits fall below a threshold.

The rule: a tenant who opted in is charged its pack when its available credits are below its
threshold, at most `TALLY_AUTOTOPUP_MAX_PER_DAY` times per UTC day, and never while another
top-up's outcome is unknown. A failed charge turns auto top-up off and tells the tenant.

What makes "never twice" hold:
- The decision runs under the tenant's payments lock, the same lock crediting a purchase takes.
  So a manual purchase is either committed before the decision (and counted, below) or credited
  after it (and the top-up was due when decided).
- "Available" counts purchases the fold has not applied yet: the folded balance (Redis live
  balance, or Postgres) plus every credit-moving event after the fold's checkpoint, read in one
  statement. A purchase credited a millisecond ago lifts the balance at once, without waiting for
  the fold. If Redis is behind the fold (its `seq` is older), the decision is put off.
- The order row (status `creating`) is committed before Stripe is called and blocks any other
  top-up until it settles; the PaymentIntent's idempotency key is `tally:topup:<order id>`, so a
  retry after a timeout or a crash replays Stripe's first answer instead of charging again.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from uuid import UUID

import msgspec

from billing.payments import repository as repo
from billing.payments.errors import (
    CardDeclined,
    InvalidPurchase,
    NoSavedPaymentMethod,
    PackNotFound,
    PaymentProviderError,
    PaymentsNotConfigured,
    TenantNotFound,
)
from billing.payments.metrics import AUTO_TOPUPS
from billing.payments.purchases import credit_order, fail_order
from billing.payments.repository import AutoTopupRow, OrderRow
from billing.payments.runtime import PaymentsRuntime
from billing.payments.schemas import AutoTopup, AutoTopupRequest
from tally.db import Connection
from tally.eventlog import NewEvent, append_events
from tally.events.billing import AutoTopupConfigured
from tally.events.tenant import Actor
from tally.live_balance import LiveBalances, fold_consumer_name
from tally.log import get_logger
from tally.money import credits_to_nano

log = get_logger(__name__)

# A top-up still `creating` after this long lost its worker mid-call: it is retried (same key).
STALE_TOPUP_SECONDS = 120


class TopupResult(msgspec.Struct, frozen=True):
    tenant_id: UUID
    outcome: str
    order_id: UUID | None = None
    available_nano: int | None = None


class AutoTopups:
    """Opting in and out, and deciding and making the charges."""

    def __init__(self, runtime: PaymentsRuntime) -> None:
        self._runtime = runtime
        self._pool = runtime.pool
        self._settings = runtime.settings

    async def get(self, tenant_id: UUID) -> AutoTopup:
        """The tenant's auto top-up settings (disabled defaults when never configured)."""
        async with self._pool.acquire() as conn:
            if await repo.get_tenant(conn, tenant_id) is None:
                raise TenantNotFound("tenant not found", param="tenant_id")
            row = await repo.get_auto_topup(conn, tenant_id)
            customer = await repo.get_customer(conn, tenant_id)
        return self._view(tenant_id, row, saved=bool(customer and customer.payment_method))

    async def configure(
        self, tenant_id: UUID, request: AutoTopupRequest, actor: Actor
    ) -> AutoTopup:
        """Turn auto top-up on (needs a saved card, a threshold and an active pack) or off."""
        async with self._pool.acquire() as conn, conn.transaction():
            tenant = await repo.get_tenant(conn, tenant_id)
            if tenant is None:
                raise TenantNotFound("tenant not found", param="tenant_id")
            await repo.lock_tenant_payments(conn, tenant_id)
            current = await repo.lock_auto_topup(conn, tenant_id)
            customer = await repo.get_customer(conn, tenant_id)
            saved = bool(customer and customer.payment_method)
            threshold = request.threshold_credits
            pack_id = request.pack_id
            if request.enabled:
                if threshold is None:
                    raise InvalidPurchase(
                        "threshold_credits is required to turn auto top-up on",
                        param="threshold_credits",
                    )
                if pack_id is None:
                    raise InvalidPurchase(
                        "pack_id is required to turn auto top-up on", param="pack_id"
                    )
                if tenant.mode != "prepaid":
                    raise InvalidPurchase("only prepaid tenants hold credits", param="enabled")
                if not saved:
                    raise NoSavedPaymentMethod(
                        "no saved card: buy credits once with save_payment_method=true first",
                        param="enabled",
                    )
            elif current is None:
                return self._view(tenant_id, None, saved=saved)
            threshold_nano = credits_to_nano(threshold) if threshold else current.threshold_nano  # type: ignore[union-attr]
            pack_id = pack_id or current.pack_id  # type: ignore[union-attr]
            pack = await repo.get_pack(conn, pack_id)
            if pack is None or (request.enabled and not pack.active):
                raise PackNotFound("no such active pack", param="pack_id")
            row = await repo.upsert_auto_topup(
                conn,
                tenant_id,
                enabled=request.enabled,
                threshold_nano=threshold_nano,
                pack_id=pack_id,
            )
            await append_events(
                conn,
                [
                    NewEvent(
                        AutoTopupConfigured(
                            tenant_id=tenant_id,
                            enabled=request.enabled,
                            threshold_nano=threshold_nano,
                            pack_id=str(pack_id),
                            actor=actor,
                        ),
                        f"autotopup-configured:{uuid.uuid4()}",
                    )
                ],
            )
        log.info(
            "auto top-up configured",
            tenant_id=str(tenant_id),
            enabled=request.enabled,
            threshold_nano=threshold_nano,
        )
        return self._view(tenant_id, row, saved=saved)

    def _view(self, tenant_id: UUID, row: AutoTopupRow | None, *, saved: bool) -> AutoTopup:
        return AutoTopup(
            tenant_id=tenant_id,
            enabled=bool(row and row.enabled),
            threshold_nano=row.threshold_nano if row else None,
            pack_id=row.pack_id if row else None,
            disabled_reason=row.disabled_reason if row else None,
            payment_method_saved=saved,
            max_per_day=self._settings.autotopup_max_per_day,
        )

    # --- deciding and charging ----------------------------------------------------------------

    async def check_all(self) -> list[TopupResult]:
        """Check every opted-in tenant, and retry top-ups whose worker died mid-call."""
        results = await self.retry_stale()
        async with self._pool.acquire() as conn:
            tenants = await repo.list_enabled_auto_topups(conn)
        for tenant_id in tenants:
            results.append(await self.check(tenant_id))
        return results

    async def check(self, tenant_id: UUID) -> TopupResult:
        """Top the tenant up if the rule says so (see the module docstring); idempotent."""
        try:
            self._runtime.stripe()
        except PaymentsNotConfigured:
            return TopupResult(tenant_id, "payments not configured")
        order, outcome, available = await self._decide(tenant_id)
        if order is None:
            log.debug("auto top-up not due", tenant_id=str(tenant_id), outcome=outcome)
            return TopupResult(tenant_id, outcome, available_nano=available)
        return await self._charge(order, available)

    async def _decide(self, tenant_id: UUID) -> tuple[OrderRow | None, str, int | None]:
        async with self._pool.acquire() as conn, conn.transaction():
            await repo.lock_tenant_payments(conn, tenant_id)
            config = await repo.lock_auto_topup(conn, tenant_id)
            if config is None or not config.enabled:
                return None, "not enabled", None
            if await repo.unsettled_topups(conn, tenant_id):
                return None, "a top-up is in progress", None
            day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            if await repo.count_topups_since(conn, tenant_id, day) >= (
                self._settings.autotopup_max_per_day
            ):
                return None, "daily limit reached", None
            available = await self._available_nano(conn, tenant_id)
            if available is None:
                return None, "balance is being folded; decide next time", None
            if available >= config.threshold_nano:
                return None, "above threshold", available
            customer = await repo.get_customer(conn, tenant_id)
            pack = await repo.get_pack(conn, config.pack_id)
            if customer is None or not customer.customer_id or not customer.payment_method:
                await repo.disable_auto_topup(conn, tenant_id, "no saved card")
                return None, "no saved card: turned off", available
            if pack is None or not pack.active:
                await repo.disable_auto_topup(conn, tenant_id, "the pack is no longer offered")
                return None, "pack withdrawn: turned off", available
            order = await repo.insert_order(
                conn,
                order_id=uuid.uuid4(),
                tenant_id=tenant_id,
                source="auto_topup",
                pack_id=pack.id,
                credits=pack.credits,
                amount_nano=credits_to_nano(pack.credits),
                price_minor=pack.price_minor,
                currency=pack.currency,
                save_payment_method=False,
                stripe_customer=customer.customer_id,
                payment_method=customer.payment_method,
                actor=Actor(kind="system", id="auto_topup"),
            )
            return order, "charging", available

    async def _available_nano(self, conn: Connection, tenant_id: UUID) -> int | None:
        """Available credits including purchases not folded yet; None when Redis lags the fold."""
        shards = self._settings.fold_shards
        shard = await repo.shard_of(conn, tenant_id, shards)
        log_view = await repo.balance_from_log(conn, tenant_id, fold_consumer_name(shard, shards))
        # Postgres first, then Redis: a fold committing in between makes Redis newer, so the
        # purchase is counted twice (no charge now, decided again next time), never missed.
        live = LiveBalances(self._runtime.redis).snapshot if self._runtime.redis else None
        snapshot = await live(tenant_id) if live else None
        if snapshot is None:
            return (
                log_view.balance_nano + log_view.unfolded_credit_nano - log_view.unfolded_usage_nano
            )
        if snapshot.seq < log_view.folded_events:
            return None
        # The live balance already subtracts holds and settled-but-unfolded usage.
        return snapshot.available_nano + log_view.unfolded_credit_nano

    async def _charge(self, order: OrderRow, available: int | None) -> TopupResult:
        assert order.stripe_customer
        assert order.payment_method
        try:
            intent = await self._runtime.stripe().charge_off_session(
                amount_minor=order.price_minor,
                currency=order.currency,
                customer=order.stripe_customer,
                payment_method=order.payment_method,
                metadata={
                    "tally_order_id": str(order.id),
                    "tenant_id": str(order.tenant_id),
                    "pack_id": str(order.pack_id),
                    "credits": str(order.credits),
                    "source": "auto_topup",
                },
                description=f"Tally auto top-up: {order.credits} credits",
                idempotency_key=f"tally:topup:{order.id}",
            )
        except CardDeclined as exc:
            async with self._pool.acquire() as conn, conn.transaction():
                await repo.lock_tenant_payments(conn, order.tenant_id)
                locked = await repo.lock_order(conn, order.id)
                assert locked is not None
                await fail_order(
                    conn,
                    locked,
                    code=exc.decline_code or exc.code,
                    reason=exc.message,
                    payment_intent=exc.payment_intent,
                )
            AUTO_TOPUPS.labels("declined").inc()
            log.warning(
                "auto top-up declined; turned off", tenant_id=str(order.tenant_id), code=exc.code
            )
            return TopupResult(order.tenant_id, "declined: turned off", order.id, available)
        except PaymentProviderError:
            AUTO_TOPUPS.labels("unknown").inc()
            # Outcome unknown: the order stays `creating` and blocks other top-ups until
            # retry_stale() asks Stripe again with the same idempotency key.
            return TopupResult(
                order.tenant_id, "stripe unavailable: will retry", order.id, available
            )
        async with self._pool.acquire() as conn, conn.transaction():
            await repo.lock_tenant_payments(conn, order.tenant_id)
            locked = await repo.lock_order(conn, order.id)
            assert locked is not None
            if intent.status == "succeeded":
                await credit_order(
                    conn,
                    locked,
                    paid_minor=intent.amount_received,
                    currency=intent.currency,
                    payment_intent=intent.id,
                    charge=intent.latest_charge_id,
                    session_id=None,
                    method_kind=intent.payment_method_kind,
                )
                outcome = "charged"
                AUTO_TOPUPS.labels("charged").inc()
            elif intent.status in ("processing", "requires_capture"):
                await repo.link_payment_intent(conn, order.id, intent.id, intent.latest_charge_id)
                await repo.mark_order_status(conn, order.id, "processing")
                outcome = "processing: the webhook settles it"
            else:
                await fail_order(
                    conn,
                    locked,
                    code=intent.status,
                    reason="the bank asked for the customer's confirmation",
                    payment_intent=intent.id,
                )
                outcome = f"{intent.status}: turned off"
        log.info(
            "auto top-up", tenant_id=str(order.tenant_id), order_id=str(order.id), outcome=outcome
        )
        return TopupResult(order.tenant_id, outcome, order.id, available)

    async def retry_stale(
        self, older_than_seconds: float = STALE_TOPUP_SECONDS
    ) -> list[TopupResult]:
        """Ask Stripe again (same key, same card) about top-ups left `creating` by a crash or an
        outage: Stripe replays the first answer, so the card is charged at most once."""
        async with self._pool.acquire() as conn:
            stale = await repo.stale_unsettled_topups(conn, older_than_seconds)
        results: list[TopupResult] = []
        for order_id in stale:
            async with self._pool.acquire() as conn:
                order = await repo.get_order(conn, order_id)
            if order is not None and order.status == "creating":
                results.append(await self._charge(order, None))
        return results
