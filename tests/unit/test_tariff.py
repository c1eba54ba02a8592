"""The integer pricing the gateway and the fold share equals tally.pricing.price_usage, always."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from tally.pricebook import EffectivePrice
from tally.pricing import ModelPrice, TokenUsage, price_usage
from tally.tariff import Tariff

rates = st.decimals(min_value=0, max_value=1000, places=6, allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=10**9)


@settings(max_examples=2000, deadline=None)
@given(
    input_rate=rates,
    output_rate=rates,
    cached=st.none() | rates,
    write=st.none() | rates,
    reasoning=st.none() | rates,
    margin=st.decimals(min_value=-100, max_value=500, places=4, allow_nan=False),
    credit=st.sampled_from(
        [Decimal(1), Decimal(3), Decimal("0.01"), Decimal("7.77"), Decimal("0.3")]
    ),
    usage=st.builds(
        TokenUsage,
        input_tokens=counts,
        cached_input_tokens=counts,
        cache_write_tokens=counts,
        output_tokens=counts,
        reasoning_tokens=counts,
    ),
)
def test_the_tariff_prices_exactly_like_price_usage(
    input_rate: Decimal,
    output_rate: Decimal,
    cached: Decimal | None,
    write: Decimal | None,
    reasoning: Decimal | None,
    margin: Decimal,
    credit: Decimal,
    usage: TokenUsage,
) -> None:
    sheet = ModelPrice(
        input_per_mtok=input_rate,
        output_per_mtok=output_rate,
        cached_input_per_mtok=cached,
        cache_write_per_mtok=write,
        reasoning_per_mtok=reasoning,
    )
    price = EffectivePrice(1, "m", sheet, margin, credit)
    expected = price_usage(usage, sheet, margin_pct=margin, credit_price_usd=credit)
    assert Tariff(price).charge(usage) == expected


def test_ties_round_half_up_like_the_money_module() -> None:
    # 1 token at $0.0005 per million = 0.5 nano-credit exactly: rounds up to 1.
    sheet = ModelPrice(input_per_mtok=Decimal("0.0005"), output_per_mtok=Decimal(0))
    price = EffectivePrice(1, "m", sheet, Decimal(0), Decimal(1))
    usage = TokenUsage(input_tokens=1)
    assert Tariff(price).charge(usage) == price_usage(
        usage, sheet, margin_pct=Decimal(0), credit_price_usd=Decimal(1)
    )
    assert Tariff(price).charge(usage).charge_nano == 1


def test_images_and_per_request_prices_go_through_price_usage() -> None:
    sheet = ModelPrice(
        input_per_mtok=Decimal(1),
        output_per_mtok=Decimal(2),
        per_image={"1024x1024": Decimal("0.04")},
        per_request=Decimal("0.001"),
    )
    price = EffectivePrice(1, "m", sheet, Decimal(10), Decimal(1))
    usage = TokenUsage(input_tokens=5, images={"1024x1024": 2})
    assert Tariff(price).charge(usage) == price_usage(
        usage, sheet, margin_pct=Decimal(10), credit_price_usd=Decimal(1)
    )
