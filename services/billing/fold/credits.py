"""A tenant's credits as lots: where each credit came from, and where it went.

Pure and synchronous: the fold loads a `TenantCredits` from Postgres, applies events to it in log
order and writes it back. Every operation keeps two identities exact, to the nano-credit:

    balance = granted + purchased + adjusted - refunded - expired - charged - frozen - lost
    balance = sum(open lot remaining) - debt - sum(pending claims)

Lots keep paid and promotional credits apart. A debit (usage, a negative adjustment, the part
of a refund its purchase no longer holds) takes credits from promotional lots before paid ones,
the earliest expiry first, then the oldest; what no lot covers becomes debt, which the next
credits to arrive repay first. A refund or dispute naming a purchase not folded yet (Stripe
does not promise order) becomes a pending claim: the balance drops at once, and the claim is
settled against the purchase when it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import msgspec

Funding = Literal["paid", "promotional"]
LotSource = Literal["starter", "promotional", "manual", "adjustment", "purchase", "dispute"]
# Why credits left a lot. Usage paid at once is recorded per request (ledger, rollups), not
# here; `usage_debt` is credits that later repaid usage no credits covered when it happened.
Reason = Literal["usage", "usage_debt", "refund", "adjustment", "dispute", "expiry", "debt"]

PAID: Funding = "paid"
PROMOTIONAL: Funding = "promotional"
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass(slots=True)
class Lot:
    """Credits of one origin: a grant, a purchase, an adjustment."""

    lot_id: str
    source: LotSource
    funding: Funding
    reference: str
    amount_nano: int
    remaining_nano: int
    opened_position: int
    opened_at: datetime
    expires_at: datetime | None = None
    frozen_nano: int = 0
    expired_position: int | None = None
    expired_nano: int = 0
    dirty: bool = False

    @property
    def open(self) -> bool:
        return self.expired_position is None

    def consumption_key(self) -> tuple[bool, datetime, int]:
        # Promotional before paid; earliest expiry first (never-expiring last); oldest first.
        return (self.funding == PAID, self.expires_at or _NEVER, self.opened_position)


class PendingClaim(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A refund, freeze or lost dispute against a purchase the fold has not seen yet."""

    kind: Literal["refund", "freeze", "lost"]
    amount_nano: int
    dispute_id: str | None = None


class DisputeState(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An open dispute: where its frozen credits are held (purchase lot, debt, or pending)."""

    purchase_id: str
    amount_nano: int
    in_lot_nano: int = 0
    as_debt_nano: int = 0
    pending_nano: int = 0


class Claims(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What the lots alone cannot express; stored as JSON on the balance row."""

    pending: dict[str, list[PendingClaim]] = msgspec.field(default_factory=dict)
    disputes: dict[str, DisputeState] = msgspec.field(default_factory=dict)
    # Dispute outcomes that arrived before the dispute opened.
    outcomes: dict[str, Literal["won", "lost"]] = msgspec.field(default_factory=dict)

    @property
    def pending_nano(self) -> int:
        return sum(c.amount_nano for claims in self.pending.values() for c in claims)


@dataclass(slots=True)
class Totals:
    """The running statement: every term of the conservation formula."""

    granted: int = 0
    purchased: int = 0
    adjusted: int = 0
    refunded: int = 0
    expired: int = 0
    charged: int = 0
    frozen: int = 0
    dispute_lost: int = 0

    def balance(self) -> int:
        return (
            self.granted
            + self.purchased
            + self.adjusted
            - self.refunded
            - self.expired
            - self.charged
            - self.frozen
            - self.dispute_lost
        )


@dataclass(slots=True)
class Debit:
    """How a debit was covered."""

    paid: int = 0
    promo: int = 0
    unfunded: int = 0


# (funding, reason, amount) of credits leaving lots during one operation.
Consumed = list[tuple[Funding, Reason, int]]


@dataclass(slots=True)
class TenantCredits:
    """One tenant's balance, lots, debt and claims, as the fold keeps them."""

    balance_nano: int = 0
    folded_events: int = 0
    last_position: int = 0
    totals: Totals = field(default_factory=Totals)
    debt_usage_nano: int = 0
    debt_other_nano: int = 0
    claims: Claims = field(default_factory=Claims)
    # Open lots, plus any closed lot an event of this batch names (loaded on demand).
    lots: dict[str, Lot] = field(default_factory=dict)
    # Filled by every operation; the fold drains it into the consumption rollups.
    consumed: Consumed = field(default_factory=list)
    _order: list[Lot] | None = None

    def attach(self, lot: Lot) -> None:
        """A lot loaded from Postgres (a state carried from the previous batch may get more)."""
        self.lots[lot.lot_id] = lot
        self._order = None

    # --- credits in -----------------------------------------------------------------------

    def grant(
        self,
        grant_id: str,
        amount: int,
        *,
        source: LotSource,
        expires_at: datetime | None,
        position: int,
        at: datetime,
    ) -> None:
        """Free credits (starter, promotional, manual) as a promotional lot."""
        self.totals.granted += amount
        self._credit(
            f"grant:{grant_id}", source, PROMOTIONAL, grant_id, amount, expires_at, position, at
        )

    def purchase(self, purchase_id: str, amount: int, *, position: int, at: datetime) -> None:
        """Paid credits; claims that arrived before the purchase are settled against it first."""
        self.totals.purchased += amount
        lot = self._open_lot(
            f"purchase:{purchase_id}", "purchase", PAID, purchase_id, amount, None, position, at
        )
        for claim in self.claims.pending.pop(purchase_id, []):
            self._settle_pending_claim(lot, purchase_id, claim)
        self._repay_debt(lot)

    def adjust(self, adjustment_id: str, amount: int, *, position: int, at: datetime) -> Debit:
        """An operator's correction: up opens a promotional lot, down is a debit."""
        self.totals.adjusted += amount
        if amount >= 0:
            self._credit(
                f"adjustment:{adjustment_id}",
                "adjustment",
                PROMOTIONAL,
                adjustment_id,
                amount,
                None,
                position,
                at,
            )
            return Debit()
        return self._debit(-amount, "adjustment")

    # --- credits out ----------------------------------------------------------------------

    def charge(self, amount: int) -> Debit:
        """A usage charge (already recomputed by the fold)."""
        self.totals.charged += amount
        return self._debit(amount, "usage")

    def expire(self, grant_id: str, *, position: int) -> int:
        """A grant expired: remove what is left of it (nothing if unknown or already expired)."""
        lot = self.lots.get(f"grant:{grant_id}")
        if lot is None or not lot.open:
            return 0
        removed = lot.remaining_nano
        lot.remaining_nano = 0
        lot.expired_position = position
        lot.expired_nano = removed
        lot.dirty = True
        self._order = None
        self.totals.expired += removed
        self.balance_nano -= removed
        if removed:
            self.consumed.append((lot.funding, "expiry", removed))
        return removed

    def refund(self, purchase_id: str, amount: int) -> None:
        """Take a refund's credits back: from its purchase first, then like any debit."""
        self.totals.refunded += amount
        lot = self.lots.get(f"purchase:{purchase_id}")
        if lot is None:
            self._add_pending(purchase_id, PendingClaim(kind="refund", amount_nano=amount))
            return
        taken = min(lot.remaining_nano, amount)
        self._take(lot, taken, "refund")
        if amount - taken:
            self._debit(amount - taken, "refund", debt_kind="other")

    def freeze(self, dispute_id: str, purchase_id: str, amount: int) -> None:
        """A dispute opened: its credits are held back until it closes."""
        if dispute_id in self.claims.disputes:
            return  # already open (the same dispute reported twice): nothing more to hold
        outcome = self.claims.outcomes.pop(dispute_id, None)
        if outcome == "won":
            return  # closed in our favour before it opened: nothing ever held back
        if outcome == "lost":
            # Closed against us before it opened: the credits go, as with a refund.
            self.totals.dispute_lost += amount
            self._remove_from_purchase(purchase_id, amount, "lost", dispute_id)
            return
        self.totals.frozen += amount
        dispute = DisputeState(purchase_id=purchase_id, amount_nano=amount)
        self.claims.disputes[dispute_id] = dispute
        lot = self.lots.get(f"purchase:{purchase_id}")
        if lot is None:
            dispute.pending_nano = amount
            self._add_pending(
                purchase_id, PendingClaim(kind="freeze", amount_nano=amount, dispute_id=dispute_id)
            )
            return
        self._freeze_from_lot(lot, dispute, amount)

    def unfreeze(self, dispute_id: str, outcome: Literal["won", "lost"]) -> int:
        """A dispute closed: won gives the frozen credits back, lost removes them for good.

        Returns the balance change (the restored amount, or 0).
        """
        dispute = self.claims.disputes.pop(dispute_id, None)
        if dispute is None:
            self.claims.outcomes[dispute_id] = outcome
            return 0
        self.totals.frozen -= dispute.amount_nano
        lot = self.lots.get(f"purchase:{dispute.purchase_id}")
        if outcome == "lost":
            self.totals.dispute_lost += dispute.amount_nano
            if lot is not None and dispute.in_lot_nano:
                lot.frozen_nano -= dispute.in_lot_nano
                lot.dirty = True
                self.consumed.append((PAID, "dispute", dispute.in_lot_nano))
            if dispute.pending_nano:
                # The purchase is still unseen: when it arrives the credits leave it for good.
                self._retag_pending(dispute.purchase_id, dispute_id, "lost")
            return 0
        # Won: everything held comes back.
        if dispute.pending_nano:
            self._drop_pending(dispute.purchase_id, dispute_id)
            self.balance_nano += dispute.pending_nano
        if lot is not None and dispute.in_lot_nano:
            lot.frozen_nano -= dispute.in_lot_nano
            lot.remaining_nano += dispute.in_lot_nano
            lot.dirty = True
            self.balance_nano += dispute.in_lot_nano
        if dispute.as_debt_nano:
            self._restore_debt(dispute.purchase_id, dispute_id, dispute.as_debt_nano)
        return dispute.amount_nano

    # --- checks ---------------------------------------------------------------------------

    def check(self) -> None:
        """Assert both identities (tests and replay call this after every event)."""
        open_remaining = sum(lot.remaining_nano for lot in self.lots.values() if lot.open)
        debt = self.debt_usage_nano + self.debt_other_nano
        pending = self.claims.pending_nano
        assert self.balance_nano == self.totals.balance(), (self.balance_nano, self.totals)
        assert self.balance_nano == open_remaining - debt - pending, (
            self.balance_nano,
            open_remaining,
            debt,
            pending,
        )

    # --- internals ------------------------------------------------------------------------

    def _open_lot(
        self,
        lot_id: str,
        source: LotSource,
        funding: Funding,
        reference: str,
        amount: int,
        expires_at: datetime | None,
        position: int,
        at: datetime,
    ) -> Lot:
        lot = self.lots.get(lot_id)
        if lot is not None:
            # The same grant or purchase id twice under different idempotency keys: count both
            # (the log says so), in one lot.
            lot.amount_nano += amount
            lot.remaining_nano += amount
            if not lot.open:
                # Credits added to an already expired grant expire with it at once.
                lot.remaining_nano -= amount
                lot.expired_nano += amount
                self.totals.expired += amount
                self.balance_nano -= amount
                if amount:
                    self.consumed.append((funding, "expiry", amount))
        else:
            lot = Lot(
                lot_id=lot_id,
                source=source,
                funding=funding,
                reference=reference,
                amount_nano=amount,
                remaining_nano=amount,
                opened_position=position,
                opened_at=at,
                expires_at=expires_at,
            )
            self.lots[lot_id] = lot
        lot.dirty = True
        self._order = None
        self.balance_nano += amount
        return lot

    def _credit(
        self,
        lot_id: str,
        source: LotSource,
        funding: Funding,
        reference: str,
        amount: int,
        expires_at: datetime | None,
        position: int,
        at: datetime,
    ) -> None:
        lot = self._open_lot(lot_id, source, funding, reference, amount, expires_at, position, at)
        self._repay_debt(lot)

    def _repay_debt(self, lot: Lot) -> None:
        # Balance is unchanged: debt and the lot shrink together.
        if not lot.open:
            return
        for kind in ("usage", "other"):
            debt = self.debt_usage_nano if kind == "usage" else self.debt_other_nano
            repay = min(debt, lot.remaining_nano)
            if not repay:
                continue
            lot.remaining_nano -= repay
            lot.dirty = True
            if kind == "usage":
                self.debt_usage_nano -= repay
                self.consumed.append((lot.funding, "usage_debt", repay))
            else:
                self.debt_other_nano -= repay
                self.consumed.append((lot.funding, "debt", repay))

    def _take(self, lot: Lot, amount: int, reason: Reason) -> None:
        if not amount:
            return
        lot.remaining_nano -= amount
        lot.dirty = True
        self.balance_nano -= amount
        self.consumed.append((lot.funding, reason, amount))

    def _debit(
        self, amount: int, reason: Reason, *, debt_kind: Literal["usage", "other"] | None = None
    ) -> Debit:
        result = Debit()
        if amount <= 0:
            return result
        left = amount
        # Usage is recorded per request by the ledger and the rollups; the other reasons here.
        record = reason != "usage"
        order = self._order
        if order is None:
            order = self._order = sorted(
                (lot for lot in self.lots.values() if lot.open), key=Lot.consumption_key
            )
        for lot in order:
            available = lot.remaining_nano
            if not available:
                continue
            taken = available if available < left else left
            lot.remaining_nano = available - taken
            lot.dirty = True
            if record:
                self.consumed.append((lot.funding, reason, taken))
            if lot.funding == PAID:
                result.paid += taken
            else:
                result.promo += taken
            left -= taken
            if not left:
                break
        if left:
            if (debt_kind or ("usage" if reason == "usage" else "other")) == "usage":
                self.debt_usage_nano += left
            else:
                self.debt_other_nano += left
            result.unfunded = left
        self.balance_nano -= amount
        return result

    def _add_pending(self, purchase_id: str, claim: PendingClaim) -> None:
        self.claims.pending.setdefault(purchase_id, []).append(claim)
        self.balance_nano -= claim.amount_nano

    def _drop_pending(self, purchase_id: str, dispute_id: str) -> None:
        # Only the open dispute's freeze: a claim the same dispute id left when it closed
        # earlier (lost before it opened) is a different claim and stays.
        claims = [
            c
            for c in self.claims.pending.get(purchase_id, [])
            if not (c.dispute_id == dispute_id and c.kind == "freeze")
        ]
        if claims:
            self.claims.pending[purchase_id] = claims
        else:
            self.claims.pending.pop(purchase_id, None)

    def _retag_pending(self, purchase_id: str, dispute_id: str, kind: Literal["lost"]) -> None:
        for claim in self.claims.pending.get(purchase_id, []):
            if claim.dispute_id == dispute_id and claim.kind == "freeze":
                claim.kind = kind

    def _settle_pending_claim(self, lot: Lot, purchase_id: str, claim: PendingClaim) -> None:
        # The balance already dropped when the claim arrived; only where it is held changes.
        taken = min(claim.amount_nano, lot.remaining_nano)
        left = claim.amount_nano - taken
        self.balance_nano += claim.amount_nano  # the claim leaves "pending" ...
        if claim.kind == "freeze" and claim.dispute_id in self.claims.disputes:
            dispute = self.claims.disputes[claim.dispute_id]
            dispute.pending_nano -= claim.amount_nano
            self._freeze_from_lot(lot, dispute, claim.amount_nano)  # ... and is held again
            return
        reason: Reason = "refund" if claim.kind == "refund" else "dispute"
        self._take(lot, taken, reason)
        if left:
            self._debit(left, reason, debt_kind="other")

    def _remove_from_purchase(
        self, purchase_id: str, amount: int, kind: Literal["lost"], dispute_id: str
    ) -> None:
        lot = self.lots.get(f"purchase:{purchase_id}")
        if lot is None:
            self._add_pending(
                purchase_id, PendingClaim(kind=kind, amount_nano=amount, dispute_id=dispute_id)
            )
            return
        taken = min(lot.remaining_nano, amount)
        self._take(lot, taken, "dispute")
        if amount - taken:
            self._debit(amount - taken, "dispute", debt_kind="other")

    def _freeze_from_lot(self, lot: Lot, dispute: DisputeState, amount: int) -> None:
        # Only the disputed purchase's own unspent credits are frozen; what it no longer holds
        # is held as debt, so other credits (a promotional grant) are never frozen.
        in_lot = min(lot.remaining_nano, amount)
        lot.remaining_nano -= in_lot
        lot.frozen_nano += in_lot
        lot.dirty = True
        dispute.in_lot_nano += in_lot
        dispute.as_debt_nano += amount - in_lot
        self.debt_other_nano += amount - in_lot
        self.balance_nano -= amount

    def _restore_debt(self, purchase_id: str, dispute_id: str, amount: int) -> None:
        # Held as debt: cancel what is still owed; whatever a later credit already repaid
        # comes back as credits in the purchase's lot (or a lot of its own).
        cancel = min(self.debt_other_nano, amount)
        self.debt_other_nano -= cancel
        self.balance_nano += cancel
        back = amount - cancel
        if back:
            lot = self.lots.get(f"purchase:{purchase_id}")
            if lot is not None and lot.open:
                lot.remaining_nano += back
                lot.dirty = True
                self.balance_nano += back
            else:
                at = lot.opened_at if lot is not None else datetime(1970, 1, 1, tzinfo=UTC)
                position = lot.opened_position if lot is not None else 0
                self._open_lot(
                    f"dispute:{dispute_id}", "dispute", PAID, dispute_id, back, None, position, at
                )
