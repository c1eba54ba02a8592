from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.money import (
    NANO_PER_CREDIT,
    MoneyError,
    credits_to_nano,
    format_credits,
    format_usd,
    nano_to_usd,
    parse_credits,
    parse_usd,
    round_nano,
    usd_to_cents,
    usd_to_nano,
)

nanos = st.integers(min_value=-(10**18), max_value=10**18)


@given(nanos)
def test_formatting_then_parsing_credits_returns_the_same_nano_amount(nano: int) -> None:
    assert parse_credits(format_credits(nano)) == nano


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=12, allow_nan=False))
def test_rounding_is_half_up_and_within_half_a_nano(amount: Decimal) -> None:
    rounded = round_nano(amount)
    assert abs(Decimal(rounded) - amount) <= Decimal("0.5")
    if amount - int(amount) == Decimal("0.5"):
        assert rounded == int(amount) + 1
    if amount - int(amount) == Decimal("-0.5"):
        assert rounded == int(amount) - 1


def test_ties_round_away_from_zero() -> None:
    assert round_nano(Decimal("2.5")) == 3
    assert round_nano(Decimal("3.5")) == 4
    assert round_nano(Decimal("-2.5")) == -3
    assert round_nano(Decimal("2.4999999999999999999999")) == 2


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=1, max_value=10**6))
def test_sum_of_parts_equals_whole_when_there_is_no_rounding(tokens: int, micro_usd: int) -> None:
    price = Decimal(micro_usd) / 10**6  # USD per token, exact
    whole = usd_to_nano(price * tokens, "1")
    assert whole == tokens * micro_usd * 1000


def test_credits_parse_exactly() -> None:
    assert parse_credits("1") == NANO_PER_CREDIT
    assert parse_credits("0.000000001") == 1
    assert parse_credits("1_000") == 1000 * NANO_PER_CREDIT
    assert credits_to_nano(Decimal("12.5")) == 12_500_000_000
    assert credits_to_nano(3) == 3 * NANO_PER_CREDIT


@pytest.mark.parametrize("bad", ["", "abc", "1e5", "1.2.3", "NaN", "Infinity", "0x10", "1,5"])
def test_malformed_credit_amounts_are_refused(bad: str) -> None:
    with pytest.raises(MoneyError):
        parse_credits(bad)


def test_credit_amounts_finer_than_a_nano_are_refused_not_rounded() -> None:
    with pytest.raises(MoneyError, match="finer than one nano-credit"):
        parse_credits("0.0000000001")


def test_floats_are_refused_everywhere() -> None:
    with pytest.raises(MoneyError, match="never a float"):
        credits_to_nano(0.1)  # type: ignore[arg-type]
    with pytest.raises(MoneyError, match="never a float"):
        usd_to_nano(0.1, "1")  # type: ignore[arg-type]


def test_usd_converts_at_the_credit_price() -> None:
    # 1 credit costs 0.01 USD: 1 USD buys 100 credits.
    assert usd_to_nano("1", "0.01") == 100 * NANO_PER_CREDIT
    assert nano_to_usd(100 * NANO_PER_CREDIT, "0.01") == Decimal("1")
    with pytest.raises(MoneyError):
        usd_to_nano("1", "0")


def test_usd_formatting_and_cents() -> None:
    assert format_usd(Decimal("1234.565")) == "$1,234.57"
    assert format_usd(Decimal("-0.004")) == "$0.00"
    assert format_usd(Decimal("-2.5")) == "-$2.50"
    assert parse_usd("$0.0025") == Decimal("0.0025")
    assert usd_to_cents(Decimal("10.005")) == 1001


def test_format_credits_with_fewer_places_rounds_half_up() -> None:
    assert format_credits(1_500_000_000) == "1.500000000"
    assert format_credits(1_005_000_000, places=2) == "1.01"
    assert format_credits(-1, places=0) == "-0"
