"""The finance fold: conservation, paid vs promotional credits, expiries, refunds, debt."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.finance.fold import (
    LotState,
    MoneyEvent,
    UsageSegment,
    fold_period,
)
from tally.events.billing import (
    BalanceAdjusted,
    CreditsExpired,
    CreditsFrozen,
    CreditsGranted,
    CreditsPurchased,
    CreditsRefunded,
    CreditsUnfrozen,
)
from tally.events.tenant import Actor

TENANT = uuid.uuid4()
AT = datetime(2025, 3, 10, tzinfo=UTC)
CLI = Actor(kind="cli")
C = 10**9


def purchase(pid: str, credits: int) -> MoneyEvent:
    return MoneyEvent(
        CreditsPurchased(
            tenant_id=TENANT,
            purchase_id=pid,
            amount_nano=credits,
            paid_minor=credits // C * 100,
            currency="eur",
            source="checkout",
        ),
        AT,
    )


def grant(gid: uuid.UUID, credits: int, expires: datetime | None = None) -> MoneyEvent:
    return MoneyEvent(
        CreditsGranted(
            tenant_id=TENANT,
            grant_id=gid,
            amount_nano=credits,
            kind="promotional",
            reason="welcome",
            actor=CLI,
            expires_at=expires,
        ),
        AT,
    )


def test_usage_takes_promotional_credits_first_then_paid() -> None:
    fold = fold_period(
        LotState(),
        [purchase("p1", 10 * C), grant(uuid.uuid4(), 3 * C), UsageSegment(5 * C)],
    )
    assert fold.moves.usage_promotional_nano == 3 * C
    assert fold.moves.usage_paid_nano == 2 * C
    assert fold.closing.balance_nano == 8 * C
    assert fold.closing.outstanding_nano("paid") == 8 * C
    assert fold.moves.recognized_revenue_nano == 2 * C


def test_expiry_removes_only_what_is_left_of_its_grant() -> None:
    soon, later = uuid.uuid4(), uuid.uuid4()
    fold = fold_period(
        LotState(),
        [
            grant(later, 5 * C, AT + timedelta(days=60)),
            grant(soon, 5 * C, AT + timedelta(days=1)),
            UsageSegment(7 * C),  # the grant expiring first is used first: soon 5, later 2
            MoneyEvent(CreditsExpired(tenant_id=TENANT, grant_id=soon), AT),
            MoneyEvent(CreditsExpired(tenant_id=TENANT, grant_id=later), AT),
        ],
    )
    assert fold.moves.expired_nano == 3 * C
    assert [line.amount_nano for line in fold.lines if line.kind == "expiry"] == [0, -3 * C]
    assert fold.closing.balance_nano == 0


def test_refund_takes_its_purchase_first_and_leaves_debt_when_spent() -> None:
    fold = fold_period(
        LotState(),
        [
            purchase("p1", 10 * C),
            purchase("p2", 10 * C),
            UsageSegment(10 * C),  # p1 is used up (oldest paid first)
            MoneyEvent(
                CreditsRefunded(
                    tenant_id=TENANT,
                    refund_id="r1",
                    purchase_id="p2",
                    amount_nano=10 * C,
                    refunded_minor=1000,
                    currency="eur",
                ),
                AT,
            ),
        ],
    )
    assert fold.closing.balance_nano == 0
    assert fold.moves.paid_removed_nano == 10 * C
    assert fold.moves.recognized_revenue_nano == 10 * C


def test_unfunded_usage_becomes_debt_that_new_credits_settle_first() -> None:
    fold = fold_period(LotState(), [UsageSegment(4 * C), purchase("p1", 10 * C)])
    assert fold.moves.usage_unfunded_nano == 4 * C
    assert fold.moves.debt_settled_paid_nano == 4 * C
    assert fold.moves.recognized_revenue_nano == 4 * C
    assert fold.closing.debt_nano == 0
    assert fold.closing.balance_nano == 6 * C


def test_a_dispute_changes_the_balance_only_when_lost() -> None:
    frozen = MoneyEvent(
        CreditsFrozen(tenant_id=TENANT, dispute_id="d1", purchase_id="p1", amount_nano=4 * C),
        AT,
    )
    won = fold_period(
        LotState(),
        [
            purchase("p1", 10 * C),
            frozen,
            MoneyEvent(CreditsUnfrozen(tenant_id=TENANT, dispute_id="d1", outcome="won"), AT),
        ],
    )
    assert won.closing.balance_nano == 10 * C
    lost = fold_period(
        LotState(),
        [
            purchase("p1", 10 * C),
            frozen,
            MoneyEvent(CreditsUnfrozen(tenant_id=TENANT, dispute_id="d1", outcome="lost"), AT),
        ],
    )
    assert lost.closing.balance_nano == 6 * C
    assert lost.moves.charged_back_nano == 4 * C
    assert [line.kind for line in lost.lines] == ["purchase", "chargeback"]


def _event(kind: int, n: int, amount: int, grants: list[uuid.UUID]) -> MoneyEvent | UsageSegment:
    if kind == 0:
        return purchase(f"p{n % 4}-{n}", amount)
    if kind == 1:
        gid = uuid.uuid4()
        grants.append(gid)
        return grant(gid, amount, AT + timedelta(days=n % 5) if n % 2 else None)
    if kind == 2:
        return UsageSegment(amount)
    if kind == 3 and grants:
        return MoneyEvent(CreditsExpired(tenant_id=TENANT, grant_id=grants[n % len(grants)]), AT)
    if kind == 4:
        return MoneyEvent(
            BalanceAdjusted(
                tenant_id=TENANT,
                adjustment_id=uuid.uuid4(),
                amount_nano=amount if n % 2 else -amount,
                reason="fix",
                actor=CLI,
            ),
            AT,
        )
    return MoneyEvent(
        CreditsRefunded(
            tenant_id=TENANT,
            refund_id=f"r{n}",
            purchase_id=f"p{n % 4}-{n}",
            amount_nano=amount,
            refunded_minor=1,
            currency="eur",
        ),
        AT,
    )


steps = st.lists(st.tuples(st.integers(0, 5), st.integers(1, 10**12)), min_size=0, max_size=40)


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(0, 40))
def test_every_fold_conserves_credits_and_chains_across_periods(
    script: list[tuple[int, int]], cut: int
) -> None:
    grants: list[uuid.UUID] = []
    items = [_event(kind, n, amount, grants) for n, (kind, amount) in enumerate(script)]
    whole = fold_period(LotState(), items)
    # closing = opening + every line, to the nano-credit
    assert whole.closing.balance_nano == whole.moves.net_change_nano
    assert whole.closing.balance_nano == sum(line.amount_nano for line in whole.lines) - (
        whole.moves.usage_nano
    )
    # lots and debt always explain the balance; usage is paid + promotional + unfunded
    closing = whole.closing
    assert closing.balance_nano == (
        closing.outstanding_nano("paid")
        + closing.outstanding_nano("promotional")
        - closing.debt_nano
    )
    moves = whole.moves
    assert moves.usage_nano == (
        moves.usage_paid_nano + moves.usage_promotional_nano + moves.usage_unfunded_nano
    )
    assert all(lot.remaining_nano >= 0 for lot in closing.lots)
    # Two periods folded one after the other give the same as one fold over both.
    first = fold_period(LotState(), items[:cut])
    second = fold_period(first.closing, items[cut:])
    assert second.closing == whole.closing
    assert second.opening.balance_nano == first.closing.balance_nano


@settings(max_examples=200, deadline=None)
@given(steps, st.lists(st.integers(1, 10**11), min_size=1, max_size=5))
def test_summing_usage_between_money_events_changes_nothing(
    script: list[tuple[int, int]], parts: list[int]
) -> None:
    grants: list[uuid.UUID] = []
    items = [_event(kind, n, amount, grants) for n, (kind, amount) in enumerate(script)]
    split = fold_period(LotState(), [*items, *(UsageSegment(p) for p in parts)])
    summed = fold_period(LotState(), [*items, UsageSegment(sum(parts))])
    assert split.closing == summed.closing
    assert split.moves == summed.moves
