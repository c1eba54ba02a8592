"""From events to projection rows: one `BatchProjection` per fold batch.

Applies each money event to the tenant's `TenantCredits` and records what changed: a ledger line
per balance change, usage rollup increments, credits consumed by funding and reason, pricing
mismatches. Pure: no I/O. The fold (`billing.fold.service`) loads the states, runs this, and
writes the result in the transaction that advances its checkpoint; replay runs the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from uuid import UUID

from billing.fold.credits import Debit, TenantCredits
from billing.fold.repository import ROLLUP_COUNTERS, MismatchRow
from tally.eventlog import StoredEvent
from tally.events.billing import (
    BalanceAdjusted,
    CreditsExpired,
    CreditsFrozen,
    CreditsGranted,
    CreditsPurchased,
    CreditsRefunded,
    CreditsUnfrozen,
    UsageRecorded,
)
from tally.log import get_logger
from tally.money import format_credits
from tally.pricebook import PriceBookSnapshot
from tally.pricing import PricingError

log = get_logger(__name__)

RollupKey = tuple[UUID, UUID, str, str, datetime]
_ONE_HOUR = timedelta(hours=1)
_N_COUNTERS = len(ROLLUP_COUNTERS)
(
    _REQUESTS,
    _ERRORS,
    _INPUT,
    _CACHED,
    _CACHE_WRITE,
    _OUTPUT,
    _REASONING,
    _IMAGES,
    _BASE,
    _CHARGE,
    _MARGIN,
    _PAID,
    _PROMO,
    _UNFUNDED,
    _MISMATCHES,
) = range(_N_COUNTERS)


@dataclass(slots=True)
class BatchProjection:
    """Everything one batch writes, accumulated across its events."""

    ledger: list[tuple[object, ...]] = field(default_factory=list)
    rollups: dict[RollupKey, list[int]] = field(default_factory=dict)
    consumption: dict[tuple[UUID, date, str, str], int] = field(default_factory=dict)
    mismatches: list[MismatchRow] = field(default_factory=list)
    # Per tenant: the request ids of the usage folded (the live balance drops their charges).
    request_ids: dict[UUID, list[str]] = field(default_factory=dict)


def utc(moment: datetime) -> datetime:
    tz = moment.tzinfo
    if tz is UTC:
        return moment
    return moment.replace(tzinfo=UTC) if tz is None else moment.astimezone(UTC)


def referenced_lots(stored: StoredEvent, state: TenantCredits) -> str | None:
    """The lot an event acts on by name, which the fold must load even when it is closed."""
    if stored.type == "UsageRecorded":
        return None  # nearly every event: usage names no lot
    event = stored.event
    if isinstance(event, CreditsRefunded | CreditsFrozen):
        return f"purchase:{event.purchase_id}"
    if isinstance(event, CreditsPurchased):
        return f"purchase:{event.purchase_id}"
    if isinstance(event, CreditsGranted | CreditsExpired):
        return f"grant:{event.grant_id}"
    if isinstance(event, BalanceAdjusted):
        return f"adjustment:{event.adjustment_id}"
    if isinstance(event, CreditsUnfrozen):
        dispute = state.claims.disputes.get(event.dispute_id)
        return f"purchase:{dispute.purchase_id}" if dispute else None
    return None


class Projector:
    """Applies stored events to tenant states and accumulates the batch's rows."""

    def __init__(self, book: PriceBookSnapshot, *, check_invariants: bool = False) -> None:
        self._book = book
        self._check = check_invariants
        self._hour = self._hour_end = datetime.min.replace(tzinfo=UTC)
        self._handlers: dict[
            str, Callable[[StoredEvent, UUID, TenantCredits, BatchProjection], None]
        ] = {
            "UsageRecorded": self._usage,
            "CreditsGranted": self._granted,
            "CreditsPurchased": self._purchased,
            "CreditsRefunded": self._refunded,
            "CreditsExpired": self._expired,
            "CreditsFrozen": self._frozen,
            "CreditsUnfrozen": self._unfrozen,
            "BalanceAdjusted": self._adjusted,
        }

    def apply(
        self, stored: StoredEvent, tenant_id: UUID, state: TenantCredits, out: BatchProjection
    ) -> None:
        """Fold one event of `tenant_id` into its state and the batch's rows."""
        state.folded_events += 1
        state.last_position = stored.position
        handler = self._handlers.get(stored.type)
        if handler is not None:
            handler(stored, tenant_id, state, out)
            if state.consumed:
                self._drain_consumed(stored, tenant_id, state, out)
            if self._check:
                state.check()

    # --- per event type -------------------------------------------------------------------

    def _usage(
        self, stored: StoredEvent, tenant_id: UUID, state: TenantCredits, out: BatchProjection
    ) -> None:
        event = stored.event
        assert isinstance(event, UsageRecorded)
        occurred = utc(event.occurred_at)
        usage = event.usage
        tariff = self._book.tariff(
            tenant_id=tenant_id, model=event.model, version=event.price_version, at=occurred
        )
        reason: str | None = None
        recomputed_charge: int | None = None
        recomputed_base: int | None = None
        if tariff is None:
            reason = "unpriced"
        else:
            try:
                # Exactly price_usage (property-tested), in integers where that is exact.
                priced = tariff.charge(usage)
            except PricingError:
                reason = "unpriceable"
            else:
                recomputed_charge, recomputed_base = priced.charge_nano, priced.base_nano
                if recomputed_charge != event.charge_nano:
                    reason = "charge"
                elif recomputed_base != event.base_nano:
                    reason = "base"
        if recomputed_charge is None:
            # Nothing to recompute with (a gateway bug, or a forged event): keep the charge the
            # customer was shown, never a negative one, and report it.
            charge, base = max(0, event.charge_nano), max(0, event.base_nano)
        else:
            charge, base = recomputed_charge, recomputed_base or 0
        if reason is not None:
            out.mismatches.append(
                (
                    stored.position,
                    tenant_id,
                    event.request_id,
                    event.model,
                    event.price_version,
                    reason,
                    event.charge_nano,
                    recomputed_charge,
                    event.base_nano,
                    recomputed_base,
                    charge,
                    occurred,
                )
            )
            log.warning(
                "usage charge mismatch",
                reason=reason,
                tenant_id=str(tenant_id),
                request_id=event.request_id,
                position=stored.position,
                recorded_charge_nano=event.charge_nano,
                recomputed_charge_nano=recomputed_charge,
            )
        debit = state.charge(charge)
        if charge:
            out.ledger.append(
                (
                    tenant_id,
                    stored.position,
                    "usage",
                    -charge,
                    state.balance_nano,
                    describe_usage(event),
                    occurred,
                    event.request_id,
                    event.key_id,
                    event.model,
                    debit.paid,
                    debit.promo,
                    debit.unfunded,
                )
            )
        request_ids = out.request_ids.get(tenant_id)
        if request_ids is None:
            request_ids = out.request_ids[tenant_id] = []
        request_ids.append(event.request_id)
        # Usage arrives in time order, so the hour is almost always the previous event's.
        hour = self._hour
        if not hour <= occurred < self._hour_end:
            hour = self._hour = occurred.replace(minute=0, second=0, microsecond=0)
            self._hour_end = hour + _ONE_HOUR
        key = (tenant_id, event.key_id, event.model, event.provider or "", hour)
        counters = out.rollups.get(key)
        if counters is None:
            counters = out.rollups[key] = [0] * _N_COUNTERS
        counters[_REQUESTS] += 1
        if event.status == "error":
            counters[_ERRORS] += 1
        counters[_INPUT] += usage.input_tokens
        counters[_CACHED] += usage.cached_input_tokens
        counters[_CACHE_WRITE] += usage.cache_write_tokens
        counters[_OUTPUT] += usage.output_tokens
        counters[_REASONING] += usage.reasoning_tokens
        if usage.images:
            counters[_IMAGES] += sum(usage.images.values())
        counters[_BASE] += base
        counters[_CHARGE] += charge
        counters[_MARGIN] += charge - base
        counters[_PAID] += debit.paid
        counters[_PROMO] += debit.promo
        counters[_UNFUNDED] += debit.unfunded
        if reason is not None:
            counters[_MISMATCHES] += 1

    def _granted(
        self, stored: StoredEvent, tenant_id: UUID, state: TenantCredits, out: BatchProjection
    ) -> None:
        event = stored.event
        assert isinstance(event, CreditsGranted)
        if event.amount_nano <= 0:
            log.warning("grant ignored: amount not positive", position=stored.position)
            return
        before = state.balance_nano
        state.grant(
            str(event.grant_id),
            event.amount_nano,
            source=event.kind,
            expires_at=utc(event.expires_at) if event.expires_at else None,
            position=stored.position,
            at=stored.recorded_at,
        )
        label = {
            "starter": "Starter credits",
            "promotional": "Promotional credits",
            "manual": "Credits granted",
        }[event.kind]
        text = f"{label}: {event.reason}" if event.reason else label
        if event.expires_at:
            text += f" (expire {utc(event.expires_at):%Y-%m-%d %H:%M} UTC)"
        self._line(
            out,
            stored,
            tenant_id,
            state,
            "grant",
            state.balance_nano - before,
            text,
            str(event.grant_id),
        )

    def _purchased(
        self, stored: StoredEvent, tenant_id: UUID, state: TenantCredits, out: BatchProjection
    ) -> None:
        event = stored.event
        assert isinstance(event, CreditsPurchased)
        if event.amount_nano <= 0:
            log.warning("purchase ignored: amount not positive", position=stored.position)
            return
        before = state.balance_nano
        state.purchase(
            event.purchase_id, event.amount_nano, position=stored.position, at=stored.recorded_at
        )
        how = {"checkout": "", "auto_topup": " (automatic top-up)", "manual": " (by an operator)"}
        text = f"Purchase of {_credits(event.amount_nano)} credits{how[event.source]}"
        self._line(
            out,
            stored,
            tenant_id,
            state,
            "purchase",
            state.balance_nano - before,
            text,
            event.purchase_id,
        )

    def _refunded(
        self, stored: StoredEvent, tenant_id: UUID, state: TenantCredits, out: BatchProjection
    ) -> None:
        event = stored.event
        assert isinstance(event, CreditsRefunded)
        if event.amount_nano <= 0:
            log.warning("refund ignored: amount not positive", position=stored.position)
            return
        before = state.balance_nano
        state.refund(event.purchase_id, event.amount_nano)
        text = f"Refund of {_credits(event.amount_nano)} credits from purchase {event.purchase_id}"
        self._line(
            out,
            stored,
            tenant_id,
            state,
            "refund",
            state.balance_nano - before,
            text,
            event.refund_id,
        )

    def _expired(
        self, stored: StoredEvent, tenant_id: UUID, state: TenantCredits, out: BatchProjection
    ) -> None:
        event = stored.event
        assert isinstance(event, CreditsExpired)
        lot = state.lots.get(f"grant:{event.grant_id}")
        removed = state.expire(str(event.grant_id), position=stored.position)
        if lot is None:
            log.warning("expiry of an unknown grant", grant_id=str(event.grant_id))
        if removed:
            assert lot is not None
            kind = {"starter": "starter", "promotional": "promotional"}.get(lot.source, "granted")
            text = (
                f"Expired: {_credits(removed)} unused {kind} credits"
                f" granted on {lot.opened_at:%Y-%m-%d}"
            )
            self._line(out, stored, tenant_id, state, "expiry", -removed, text, str(event.grant_id))

    def _frozen(
        self, stored: StoredEvent, tenant_id: UUID, state: TenantCredits, out: BatchProjection
    ) -> None:
        event = stored.event
        assert isinstance(event, CreditsFrozen)
        if event.amount_nano <= 0:
            log.warning("freeze ignored: amount not positive", position=stored.position)
            return
        lost_before = state.totals.dispute_lost
        before = state.balance_nano
        state.freeze(event.dispute_id, event.purchase_id, event.amount_nano)
        if state.totals.dispute_lost != lost_before:
            kind, text = "dispute_lost", "Credits removed: a payment dispute was lost"
        else:
            kind, text = "dispute_frozen", "Credits held while a payment dispute is reviewed"
        self._line(
            out, stored, tenant_id, state, kind, state.balance_nano - before, text, event.dispute_id
        )

    def _unfrozen(
        self, stored: StoredEvent, tenant_id: UUID, state: TenantCredits, out: BatchProjection
    ) -> None:
        event = stored.event
        assert isinstance(event, CreditsUnfrozen)
        restored = state.unfreeze(event.dispute_id, event.outcome)
        if restored:
            text = "Payment dispute won: held credits restored"
            self._line(
                out, stored, tenant_id, state, "dispute_restored", restored, text, event.dispute_id
            )

    def _adjusted(
        self, stored: StoredEvent, tenant_id: UUID, state: TenantCredits, out: BatchProjection
    ) -> None:
        event = stored.event
        assert isinstance(event, BalanceAdjusted)
        before = state.balance_nano
        debit = state.adjust(
            str(event.adjustment_id),
            event.amount_nano,
            position=stored.position,
            at=stored.recorded_at,
        )
        self._line(
            out,
            stored,
            tenant_id,
            state,
            "adjustment",
            state.balance_nano - before,
            f"Adjustment: {event.reason}",
            str(event.adjustment_id),
            debit,
        )

    # --- shared ---------------------------------------------------------------------------

    @staticmethod
    def _line(
        out: BatchProjection,
        stored: StoredEvent,
        tenant_id: UUID,
        state: TenantCredits,
        kind: str,
        amount: int,
        description: str,
        reference: str,
        debit: Debit | None = None,
    ) -> None:
        if not amount:
            return  # the ledger holds balance changes only
        out.ledger.append(
            (
                tenant_id,
                stored.position,
                kind,
                amount,
                state.balance_nano,
                description,
                stored.recorded_at,
                reference,
                None,
                None,
                debit.paid if debit else 0,
                debit.promo if debit else 0,
                debit.unfunded if debit else 0,
            )
        )

    @staticmethod
    def _drain_consumed(
        stored: StoredEvent, tenant_id: UUID, state: TenantCredits, out: BatchProjection
    ) -> None:
        event = stored.event
        moment = event.occurred_at if isinstance(event, UsageRecorded) else stored.recorded_at
        day = utc(moment).date()
        consumption = out.consumption
        for funding, reason, amount in state.consumed:
            key = (tenant_id, day, funding, reason)
            consumption[key] = consumption.get(key, 0) + amount
        state.consumed.clear()


_ENDPOINT_LABELS = (
    ("chat", "Chat completion"),
    ("messages", "Message"),
    ("embedding", "Embeddings"),
    ("image", "Image generation"),
    ("completion", "Text completion"),
)


_labels: dict[str, str] = {}


def _label(endpoint: str) -> str:
    label = _labels.get(endpoint)
    if label is None:
        lowered = endpoint.lower()
        label = next((text for key, text in _ENDPOINT_LABELS if key in lowered), "API request")
        if len(_labels) < 1000:
            _labels[endpoint] = label
    return label


_prefixes: dict[tuple[str, str], str] = {}
_grouped_counts: dict[int, str] = {}


def _grouped(count: int) -> str:
    """`f"{count:,}"`, remembered: token counts repeat, and grouping digits is slow."""
    text = _grouped_counts.get(count)
    if text is None:
        text = f"{count:,}"
        if len(_grouped_counts) < 100_000:
            _grouped_counts[count] = text
    return text


def describe_usage(event: UsageRecorded) -> str:
    """A usage line as a customer reads it: what, which model, how much."""
    # The fold writes one per usage event: the "<what> with <model>" part is built once.
    prefix = _prefixes.get((event.endpoint, event.model))
    if prefix is None:
        prefix = f"{_label(event.endpoint)} with {event.model}"
        if len(_prefixes) < 10_000:
            _prefixes[(event.endpoint, event.model)] = prefix
    usage = event.usage
    total_in = usage.input_tokens + usage.cached_input_tokens + usage.cache_write_tokens
    total_out = usage.output_tokens + usage.reasoning_tokens
    if usage.images:
        parts = []
        if total_in or total_out:
            parts.append(f"{total_in:,} input + {total_out:,} output tokens")
        count = sum(usage.images.values())
        parts.append(f"{count:,} image{'s' if count != 1 else ''}")
        text = f"{prefix}: {', '.join(parts)}"
    elif total_in or total_out:
        text = f"{prefix}: {_grouped(total_in)} input + {_grouped(total_out)} output tokens"
    else:
        text = prefix
    if event.status == "client_disconnected":
        text += " (client disconnected; generated output billed)"
    return text


def _credits(nano: int) -> str:
    text = format_credits(nano)
    return text.rstrip("0").rstrip(".") if "." in text else text
