"""The credit-lot state machine: conservation under any sequence of money events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from billing.fold.credits import PAID, PROMOTIONAL, TenantCredits

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def fresh() -> TenantCredits:
    return TenantCredits()


def test_grants_are_consumed_before_purchases_earliest_expiry_first() -> None:
    credits = fresh()
    credits.purchase("p1", 100, position=1, at=T0)
    credits.grant(
        "late", 50, source="promotional", expires_at=T0 + timedelta(days=30), position=2, at=T0
    )
    credits.grant("soon", 20, source="manual", expires_at=T0 + timedelta(days=1), position=3, at=T0)
    credits.grant("never", 10, source="manual", expires_at=None, position=4, at=T0)

    debit = credits.charge(75)

    assert (debit.promo, debit.paid, debit.unfunded) == (75, 0, 0)
    assert credits.lots["grant:soon"].remaining_nano == 0
    assert credits.lots["grant:late"].remaining_nano == 0
    assert credits.lots["grant:never"].remaining_nano == 5
    assert credits.lots["purchase:p1"].remaining_nano == 100
    debit = credits.charge(10)
    assert (debit.promo, debit.paid) == (5, 5)
    credits.check()


def test_expiry_removes_only_the_unused_part() -> None:
    credits = fresh()
    credits.grant("g", 100, source="promotional", expires_at=T0, position=1, at=T0)
    credits.charge(30)
    assert credits.expire("g", position=3) == 70
    assert credits.expire("g", position=4) == 0  # a second expiry changes nothing
    assert credits.balance_nano == 0
    assert credits.totals.expired == 70
    credits.check()


def test_usage_beyond_the_credits_is_debt_that_the_next_purchase_repays_as_paid_usage() -> None:
    credits = fresh()
    credits.grant("g", 10, source="starter", expires_at=None, position=1, at=T0)
    debit = credits.charge(25)
    assert (debit.promo, debit.unfunded, credits.balance_nano) == (10, 15, -15)
    credits.consumed.clear()
    credits.purchase("p", 100, position=3, at=T0)
    assert credits.balance_nano == 85
    assert credits.consumed == [(PAID, "usage_debt", 15)]
    assert credits.debt_usage_nano == 0
    credits.check()


def test_a_refund_that_arrives_before_its_purchase_is_settled_against_it() -> None:
    credits = fresh()
    credits.grant("g", 50, source="manual", expires_at=None, position=1, at=T0)
    credits.refund("p", 40)
    assert credits.balance_nano == 10
    # The grant is untouched: the refund waits for its purchase.
    assert credits.lots["grant:g"].remaining_nano == 50
    credits.purchase("p", 100, position=3, at=T0)
    assert credits.balance_nano == 110
    assert credits.lots["purchase:p"].remaining_nano == 60
    assert not credits.claims.pending
    credits.check()


def test_a_lost_dispute_removes_the_frozen_credits_and_a_won_one_restores_them() -> None:
    credits = fresh()
    credits.purchase("p", 100, position=1, at=T0)
    credits.freeze("d1", "p", 60)
    assert credits.balance_nano == 40
    assert credits.charge(50).unfunded == 10  # frozen credits cannot be spent
    assert credits.unfreeze("d1", "won") == 60
    assert credits.balance_nano == 50
    credits.freeze("d2", "p", 30)
    assert credits.unfreeze("d2", "lost") == 0
    assert credits.balance_nano == 20
    assert credits.totals.dispute_lost == 30
    credits.check()


def test_a_dispute_closed_before_it_opened_is_settled_when_it_opens() -> None:
    credits = fresh()
    credits.purchase("p", 100, position=1, at=T0)
    credits.unfreeze("d", "lost")
    credits.freeze("d", "p", 25)
    assert credits.balance_nano == 75
    assert credits.totals.dispute_lost == 25
    credits.check()


# --- property: any sequence keeps both identities, and matches a reference model --------------

purchase_ids = st.sampled_from(["p1", "p2", "p3"])
grant_ids = st.sampled_from(["g1", "g2", "g3", "g4"])
dispute_ids = st.sampled_from(["d1", "d2"])
amounts = st.integers(min_value=1, max_value=1_000)

operations = st.one_of(
    st.tuples(st.just("grant"), grant_ids, amounts, st.integers(0, 5)),
    st.tuples(st.just("purchase"), purchase_ids, amounts),
    st.tuples(st.just("charge"), amounts),
    st.tuples(st.just("refund"), purchase_ids, amounts),
    st.tuples(st.just("expire"), grant_ids),
    st.tuples(st.just("adjust"), st.integers(-500, 500)),
    st.tuples(st.just("freeze"), dispute_ids, purchase_ids, amounts),
    st.tuples(st.just("unfreeze"), dispute_ids, st.sampled_from(["won", "lost"])),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(operations, max_size=40))
def test_every_sequence_conserves_credits(ops: list[tuple[object, ...]]) -> None:
    credits = fresh()
    # The reference: the conservation formula's terms, computed without lots.
    granted = purchased = adjusted = refunded = charged = 0
    for position, op in enumerate(ops, start=1):
        kind = op[0]
        if kind == "grant":
            _, gid, amount, days = op
            expires = T0 + timedelta(days=int(days)) if days else None  # type: ignore[call-overload]
            credits.grant(
                str(gid),
                int(amount),
                source="promotional",
                expires_at=expires,
                position=position,
                at=T0,
            )  # type: ignore[call-overload]
            granted += int(amount)  # type: ignore[call-overload]
        elif kind == "purchase":
            credits.purchase(str(op[1]), int(op[2]), position=position, at=T0)  # type: ignore[call-overload]
            purchased += int(op[2])  # type: ignore[call-overload]
        elif kind == "charge":
            debit = credits.charge(int(op[1]))  # type: ignore[call-overload]
            assert debit.paid + debit.promo + debit.unfunded == op[1]
            charged += int(op[1])  # type: ignore[call-overload]
        elif kind == "refund":
            credits.refund(str(op[1]), int(op[2]))  # type: ignore[call-overload]
            refunded += int(op[2])  # type: ignore[call-overload]
        elif kind == "expire":
            lot = credits.lots.get(f"grant:{op[1]}")
            unused = lot.remaining_nano if lot is not None and lot.open else 0
            assert credits.expire(str(op[1]), position=position) == unused
        elif kind == "adjust":
            credits.adjust(f"a{position}", int(op[1]), position=position, at=T0)  # type: ignore[call-overload]
            adjusted += int(op[1])  # type: ignore[call-overload]
        elif kind == "freeze":
            if op[1] not in credits.claims.disputes:
                credits.freeze(str(op[1]), str(op[2]), int(op[3]))  # type: ignore[call-overload]
        elif kind == "unfreeze":
            credits.unfreeze(str(op[1]), op[2])  # type: ignore[arg-type]
        credits.check()
        t = credits.totals
        assert (t.granted, t.purchased, t.adjusted, t.refunded, t.charged) == (
            granted,
            purchased,
            adjusted,
            refunded,
            charged,
        )
        assert all(
            lot.remaining_nano >= 0 and lot.frozen_nano >= 0 for lot in credits.lots.values()
        )
        assert credits.debt_usage_nano >= 0 and credits.debt_other_nano >= 0
        # Paid and promotional credits never mix: promotional lots hold only grants and
        # adjustments, paid lots only purchases (and restored dispute credits).
        for lot in credits.lots.values():
            assert (lot.funding == PAID) == (lot.source in ("purchase", "dispute"))
            assert lot.funding in (PAID, PROMOTIONAL)
