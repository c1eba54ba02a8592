from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.payments.currency import format_minor, to_minor
from billing.payments.purchases import share_nano
from tally.money import MoneyError


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("90.00", "usd", 9000),
        ("90", "usd", 9000),
        ("0.5", "eur", 50),
        ("1500", "jpy", 1500),
        ("1.234", "kwd", 1234),
    ],
)
def test_prices_convert_to_the_currencys_smallest_unit(
    amount: str, currency: str, minor: int
) -> None:
    assert to_minor(amount, currency) == minor


@pytest.mark.parametrize(("amount", "currency"), [("1.005", "usd"), ("10.5", "jpy")])
def test_prices_finer_than_the_currency_are_refused_not_rounded(amount: str, currency: str) -> None:
    with pytest.raises(MoneyError):
        to_minor(amount, currency)


def test_amounts_read_as_people_write_them() -> None:
    assert format_minor(123456, "usd") == "$1,234.56"
    assert format_minor(-2500, "gbp") == "-£25.00"
    assert format_minor(1234, "chf") == "12.34 CHF"
    assert format_minor(1500, "jpy") == "¥1,500"
    assert to_minor(Decimal("12.34"), "usd") == 1234


@given(
    credits_nano=st.integers(min_value=1, max_value=10**15),
    paid=st.integers(min_value=50, max_value=10**8),
    cuts=st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=8),
)
def test_partial_refunds_never_take_back_more_or_less_than_the_purchase(
    credits_nano: int, paid: int, cuts: list[int]
) -> None:
    refunded, taken = 0, 0
    for cut in cuts:
        part = min(cut, paid - refunded)
        if part <= 0:
            break
        refunded += part
        step = share_nano(credits_nano, paid, refunded) - taken
        assert step >= 0
        taken += step
    assert taken == share_nano(credits_nano, paid, refunded)
    assert taken <= credits_nano
    if refunded == paid:
        assert taken == credits_nano
