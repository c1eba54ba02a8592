from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.pricing import (
    ModelPrice,
    PricingError,
    TokenUsage,
    price_usage,
    worst_case_usage,
)

GPT = ModelPrice(
    input_per_mtok=Decimal("2.50"),
    output_per_mtok=Decimal("10"),
    cached_input_per_mtok=Decimal("1.25"),
    per_image={"1024x1024": Decimal("0.04"), "1024x1024/hd": Decimal("0.08")},
)
ONE = Decimal(1)


def test_each_token_kind_is_priced_at_its_own_rate() -> None:
    usage = TokenUsage(
        input_tokens=1_000_000,
        cached_input_tokens=1_000_000,
        output_tokens=1_000_000,
        reasoning_tokens=1_000_000,
    )
    charge = price_usage(usage, GPT, margin_pct=Decimal(0), credit_price_usd=ONE)
    # 2.50 + 1.25 + 10 + 10 (reasoning falls back to the output rate) = 23.75 USD = 23.75 credits
    assert charge.base_nano == 23_750_000_000
    assert charge.charge_nano == charge.base_nano
    assert charge.margin_nano == 0


def test_margin_and_credit_price_apply_once_with_one_rounding() -> None:
    usage = TokenUsage(input_tokens=7, output_tokens=3)
    # base = (7*2.5 + 3*10)/1e6 USD = 0.0000475 USD; at 0.01 USD per credit = 0.00475 credits
    charge = price_usage(usage, GPT, margin_pct=Decimal("33.3"), credit_price_usd=Decimal("0.01"))
    assert charge.base_nano == 4_750_000
    assert charge.charge_nano == 6_331_750  # 4,750,000 x 1.333 exactly


def test_half_a_nano_rounds_up() -> None:
    price = ModelPrice(input_per_mtok=Decimal("0.0005"), output_per_mtok=Decimal(0))
    # 1 token x 0.0005 USD / 1e6 = 0.5 nano-credits
    charge = price_usage(
        TokenUsage(input_tokens=1), price, margin_pct=Decimal(0), credit_price_usd=ONE
    )
    assert charge.charge_nano == 1


def test_images_by_size_and_quality_and_per_request_price() -> None:
    price = ModelPrice(
        input_per_mtok=Decimal(0),
        output_per_mtok=Decimal(0),
        per_image={"1024x1024": Decimal("0.04"), "1024x1024/hd": Decimal("0.08")},
        per_request=Decimal("0.001"),
    )
    usage = TokenUsage(images={"1024x1024/hd": 2, "1024x1024/standard": 1})
    charge = price_usage(usage, price, margin_pct=Decimal(0), credit_price_usd=ONE)
    assert charge.base_nano == 201_000_000  # 0.16 + 0.04 + 0.001
    with pytest.raises(PricingError, match="no image price"):
        price_usage(
            TokenUsage(images={"512x512": 1}), price, margin_pct=Decimal(0), credit_price_usd=ONE
        )


def test_negative_counts_and_prices_are_refused() -> None:
    with pytest.raises(PricingError):
        TokenUsage(input_tokens=-1)
    with pytest.raises(PricingError):
        ModelPrice(input_per_mtok=Decimal(-1), output_per_mtok=Decimal(1))


usages = st.builds(
    TokenUsage,
    input_tokens=st.integers(0, 10**7),
    cached_input_tokens=st.integers(0, 10**7),
    cache_write_tokens=st.integers(0, 10**7),
    output_tokens=st.integers(0, 10**6),
    reasoning_tokens=st.integers(0, 10**6),
)
rates = st.decimals(min_value=0, max_value=200, places=4, allow_nan=False, allow_infinity=False)


@given(usages, rates, rates, rates, st.decimals(min_value=-50, max_value=300, places=2))
def test_pricing_is_deterministic_and_margin_ordered(
    usage: TokenUsage,
    rate_in: Decimal,
    rate_out: Decimal,
    rate_cw: Decimal,
    margin: Decimal,
) -> None:
    price = ModelPrice(
        input_per_mtok=rate_in, output_per_mtok=rate_out, cache_write_per_mtok=rate_cw
    )
    a = price_usage(usage, price, margin_pct=margin, credit_price_usd=ONE)
    b = price_usage(
        msgspec_roundtrip(usage), msgspec_roundtrip(price), margin_pct=margin, credit_price_usd=ONE
    )
    assert a == b
    if margin >= 0:
        assert a.charge_nano >= a.base_nano


@given(usages, rates, rates, rates, rates)
def test_the_worst_case_covers_every_split_of_the_same_token_totals(
    usage: TokenUsage,
    rate_in: Decimal,
    rate_out: Decimal,
    rate_cw: Decimal,
    rate_r: Decimal,
) -> None:
    price = ModelPrice(
        input_per_mtok=rate_in,
        output_per_mtok=rate_out,
        cache_write_per_mtok=rate_cw,
        reasoning_per_mtok=rate_r,
        cached_input_per_mtok=min(rate_in, rate_cw),
    )
    worst = worst_case_usage(
        price, input_tokens=usage.total_input_tokens, max_output_tokens=usage.total_output_tokens
    )
    margin = Decimal(20)
    assert (
        price_usage(worst, price, margin_pct=margin, credit_price_usd=ONE).charge_nano
        >= price_usage(usage, price, margin_pct=margin, credit_price_usd=ONE).charge_nano
    )


def msgspec_roundtrip(value):  # type: ignore[no-untyped-def]
    import msgspec

    return msgspec.json.decode(msgspec.json.encode(value), type=type(value))
