"""The finance fold: a tenant's money events of a period, replayed over its credit lots.

This is finance's own reading of the log, kept apart from the billing fold on purpose: it is the
ground truth the statements and the reconciliation are proven against. It is pure (no I/O, no
clock): the repository feeds it the period's money events in log order, with the usage between
two money events already summed ("segments"). Summing is exact here because consuming credits is
greedy over a lot order that only money events change, so consuming a then b takes the same
credits from the same lots as consuming a + b.

Credit lots keep paid and promotional credits apart:
- a purchase opens a *paid* lot; a grant, or an upward adjustment, opens a *promotional* lot;
- usage (and a downward adjustment) consumes promotional lots first, earliest expiry first and
  non-expiring last, then paid lots oldest first; what no lot covers becomes *debt* (a metered
  tenant, or an overdraft within the gateway's estimation error);
- a new lot settles debt first; paid credits consumed, directly or by settling debt, are the
  recognized revenue;
- a refund, or a lost dispute, takes credits from its purchase's lot first, then in the usage
  order, then as debt;
- an expiry removes what is left of its grant's lot;
- a dispute freezes credits without changing the balance; only a lost dispute removes them.

So for every tenant: closing = opening + purchases + grants + adjustments - refunds - expiries
- chargebacks - usage, to the nano-credit (design invariant 2), and the lots always sum to the
balance plus the debt.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import msgspec

from tally.eventlog import Event
from tally.events.billing import (
    BalanceAdjusted,
    CreditsExpired,
    CreditsFrozen,
    CreditsGranted,
    CreditsPurchased,
    CreditsRefunded,
    CreditsUnfrozen,
)
from tally.money import format_credits

LotKind = Literal["paid", "promotional"]
MoneyLineKind = Literal["purchase", "grant", "refund", "expiry", "adjustment", "chargeback"]

# The event types the fold reads, besides UsageRecorded.
MONEY_EVENT_TYPES = (
    "CreditsPurchased",
    "CreditsGranted",
    "CreditsRefunded",
    "CreditsExpired",
    "BalanceAdjusted",
    "CreditsFrozen",
    "CreditsUnfrozen",
)


class FoldError(ValueError):
    """The log holds something the fold cannot apply (e.g. a refund of an unknown purchase)."""


class Lot(msgspec.Struct, kw_only=True):
    """Credits of one purchase, grant or upward adjustment, and how many are left."""

    lot_id: str
    kind: LotKind
    remaining_nano: int
    seq: int
    expires_at: datetime | None = None


class FrozenCredits(msgspec.Struct, frozen=True):
    """An open dispute: credits of `purchase_id` held back until it closes."""

    purchase_id: str
    amount_nano: int


class LotState(msgspec.Struct, kw_only=True):
    """A tenant's credits at a point of the log: lots, debt and open disputes."""

    lots: list[Lot] = msgspec.field(default_factory=list)
    debt_nano: int = 0
    next_seq: int = 0
    frozen: dict[str, FrozenCredits] = msgspec.field(default_factory=dict)

    @property
    def balance_nano(self) -> int:
        return sum(lot.remaining_nano for lot in self.lots) - self.debt_nano

    def outstanding_nano(self, kind: LotKind) -> int:
        return sum(lot.remaining_nano for lot in self.lots if lot.kind == kind)

    @property
    def frozen_nano(self) -> int:
        return sum(item.amount_nano for item in self.frozen.values())

    def copy(self) -> LotState:
        return msgspec.convert(msgspec.to_builtins(self), LotState)


class Taken(msgspec.Struct):
    """Where an amount taken from a tenant came from."""

    paid_nano: int = 0
    promotional_nano: int = 0
    debt_nano: int = 0


class MoneyLine(msgspec.Struct, frozen=True, kw_only=True):
    """One money event of the period as a statement line; `amount_nano` is the balance change."""

    kind: MoneyLineKind
    at: datetime
    reference: str
    description: str
    amount_nano: int


class PeriodMovements(msgspec.Struct, kw_only=True):
    """Every change a period's events made, by category and by kind of credit."""

    purchased_nano: int = 0
    granted_nano: int = 0
    refunded_nano: int = 0
    expired_nano: int = 0
    adjusted_nano: int = 0
    charged_back_nano: int = 0
    usage_nano: int = 0
    # Usage by the credits that paid for it (design: paid and promotional kept apart).
    usage_paid_nano: int = 0
    usage_promotional_nano: int = 0
    usage_unfunded_nano: int = 0
    # Debt settled when new credits arrived, by the kind of the settling lot.
    debt_settled_paid_nano: int = 0
    debt_settled_promotional_nano: int = 0
    # Paid credits that left without being used: refunds, chargebacks, downward adjustments.
    paid_removed_nano: int = 0
    promotional_removed_nano: int = 0

    @property
    def net_change_nano(self) -> int:
        return (
            self.purchased_nano
            + self.granted_nano
            + self.adjusted_nano
            - self.refunded_nano
            - self.expired_nano
            - self.charged_back_nano
            - self.usage_nano
        )

    @property
    def recognized_revenue_nano(self) -> int:
        """Paid credits consumed by usage, directly or by settling usage debt later."""
        return self.usage_paid_nano + self.debt_settled_paid_nano

    @property
    def promotional_usage_nano(self) -> int:
        return self.usage_promotional_nano + self.debt_settled_promotional_nano


class UsageSegment(msgspec.Struct, frozen=True):
    """The summed charges of the usage events between two money events of one tenant."""

    charge_nano: int


class MoneyEvent(msgspec.Struct, frozen=True):
    """A decoded money event and when the log recorded it."""

    event: Event
    recorded_at: datetime


FoldItem = MoneyEvent | UsageSegment


def _consumption_order(state: LotState) -> list[Lot]:
    promotional = sorted(
        (lot for lot in state.lots if lot.kind == "promotional"),
        key=lambda lot: (lot.expires_at is None, lot.expires_at or datetime.min, lot.seq),
    )
    paid = sorted((lot for lot in state.lots if lot.kind == "paid"), key=lambda lot: lot.seq)
    return promotional + paid


def _take(state: LotState, amount_nano: int, first: Lot | None = None) -> Taken:
    """Take `amount_nano` from the lots (`first` before the usual order), the rest as debt."""
    taken = Taken()
    left = amount_nano
    order = _consumption_order(state)
    if first is not None:
        order = [first, *(lot for lot in order if lot is not first)]
    for lot in order:
        if left == 0:
            break
        part = min(left, lot.remaining_nano)
        if part <= 0:
            continue
        lot.remaining_nano -= part
        left -= part
        if lot.kind == "paid":
            taken.paid_nano += part
        else:
            taken.promotional_nano += part
    taken.debt_nano = left
    state.debt_nano += left
    # Promotional lots at zero can never be used again; paid lots stay until a refund of their
    # purchase can no longer come (kept so a refund always finds its lot).
    state.lots = [lot for lot in state.lots if lot.kind == "paid" or lot.remaining_nano > 0]
    return taken


def _open_lot(
    state: LotState,
    moves: PeriodMovements,
    *,
    lot_id: str,
    kind: LotKind,
    amount_nano: int,
    expires_at: datetime | None = None,
) -> None:
    lot = Lot(
        lot_id=lot_id,
        kind=kind,
        remaining_nano=amount_nano,
        seq=state.next_seq,
        expires_at=expires_at,
    )
    state.next_seq += 1
    # Debt is paid back first from new credits: that is when debt-funded usage gets its money.
    settled = min(state.debt_nano, amount_nano)
    if settled > 0:
        lot.remaining_nano -= settled
        state.debt_nano -= settled
        if kind == "paid":
            moves.debt_settled_paid_nano += settled
        else:
            moves.debt_settled_promotional_nano += settled
    state.lots.append(lot)


def _find_lot(state: LotState, lot_id: str, kind: LotKind) -> Lot | None:
    return next((lot for lot in state.lots if lot.lot_id == lot_id and lot.kind == kind), None)


def _remove(moves: PeriodMovements, taken: Taken) -> None:
    moves.paid_removed_nano += taken.paid_nano
    moves.promotional_removed_nano += taken.promotional_nano


def _credits(nano: int) -> str:
    return format_credits(nano).rstrip("0").rstrip(".")


def apply_money_event(
    state: LotState, moves: PeriodMovements, item: MoneyEvent
) -> MoneyLine | None:
    """Apply one money event; returns its statement line (None for balance-neutral events)."""
    event, at = item.event, item.recorded_at
    if isinstance(event, CreditsPurchased):
        _open_lot(
            state, moves, lot_id=event.purchase_id, kind="paid", amount_nano=event.amount_nano
        )
        moves.purchased_nano += event.amount_nano
        return MoneyLine(
            kind="purchase",
            at=at,
            reference=event.purchase_id,
            description=f"Purchase of {_credits(event.amount_nano)} credits",
            amount_nano=event.amount_nano,
        )
    if isinstance(event, CreditsGranted):
        _open_lot(
            state,
            moves,
            lot_id=str(event.grant_id),
            kind="promotional",
            amount_nano=event.amount_nano,
            expires_at=event.expires_at,
        )
        moves.granted_nano += event.amount_nano
        reason = f": {event.reason}" if event.reason else ""
        return MoneyLine(
            kind="grant",
            at=at,
            reference=str(event.grant_id),
            description=f"{event.kind.capitalize()} grant{reason}",
            amount_nano=event.amount_nano,
        )
    if isinstance(event, CreditsRefunded):
        lot = _find_lot(state, event.purchase_id, "paid")
        _remove(moves, _take(state, event.amount_nano, first=lot))
        moves.refunded_nano += event.amount_nano
        return MoneyLine(
            kind="refund",
            at=at,
            reference=event.refund_id,
            description=f"Refund of purchase {event.purchase_id}",
            amount_nano=-event.amount_nano,
        )
    if isinstance(event, CreditsExpired):
        grant = _find_lot(state, str(event.grant_id), "promotional")
        expired = grant.remaining_nano if grant is not None else 0
        if grant is not None:
            state.lots.remove(grant)
        moves.expired_nano += expired
        return MoneyLine(
            kind="expiry",
            at=at,
            reference=str(event.grant_id),
            description="Unused granted credits expired",
            amount_nano=-expired,
        )
    if isinstance(event, BalanceAdjusted):
        if event.amount_nano >= 0:
            # An upward correction is free credit: promotional, so it never inflates the
            # paid-credit liability.
            _open_lot(
                state,
                moves,
                lot_id=str(event.adjustment_id),
                kind="promotional",
                amount_nano=event.amount_nano,
            )
        else:
            _remove(moves, _take(state, -event.amount_nano))
        moves.adjusted_nano += event.amount_nano
        return MoneyLine(
            kind="adjustment",
            at=at,
            reference=str(event.adjustment_id),
            description=f"Adjustment: {event.reason}" if event.reason else "Adjustment",
            amount_nano=event.amount_nano,
        )
    if isinstance(event, CreditsFrozen):
        state.frozen[event.dispute_id] = FrozenCredits(event.purchase_id, event.amount_nano)
        return None
    if isinstance(event, CreditsUnfrozen):
        frozen = state.frozen.pop(event.dispute_id, None)
        if frozen is None or event.outcome == "won":
            return None
        lot = _find_lot(state, frozen.purchase_id, "paid")
        _remove(moves, _take(state, frozen.amount_nano, first=lot))
        moves.charged_back_nano += frozen.amount_nano
        return MoneyLine(
            kind="chargeback",
            at=at,
            reference=event.dispute_id,
            description=f"Lost dispute on purchase {frozen.purchase_id}",
            amount_nano=-frozen.amount_nano,
        )
    raise FoldError(f"not a money event: {type(event).__name__}")


def apply_usage(state: LotState, moves: PeriodMovements, segment: UsageSegment) -> None:
    """Consume a segment's summed usage charges from the lots."""
    taken = _take(state, segment.charge_nano)
    moves.usage_nano += segment.charge_nano
    moves.usage_paid_nano += taken.paid_nano
    moves.usage_promotional_nano += taken.promotional_nano
    moves.usage_unfunded_nano += taken.debt_nano


class PeriodFold(msgspec.Struct, kw_only=True):
    """The result of folding one tenant's period: lines, movements, and both states."""

    opening: LotState
    closing: LotState
    moves: PeriodMovements
    lines: list[MoneyLine]


def fold_period(opening: LotState, items: Iterable[FoldItem]) -> PeriodFold:
    """Fold a tenant's period (items in log order) from the state at the period's start."""
    state = opening.copy()
    moves = PeriodMovements()
    lines: list[MoneyLine] = []
    for item in items:
        if isinstance(item, UsageSegment):
            apply_usage(state, moves, item)
        else:
            line = apply_money_event(state, moves, item)
            if line is not None:
                lines.append(line)
    return PeriodFold(opening=opening, closing=state, moves=moves, lines=lines)
