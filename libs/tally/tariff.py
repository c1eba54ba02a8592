"""A price prepared for hot paths: `tally.pricing.price_usage`, exactly, in integer arithmetic.

`price_usage` works in 60-digit Decimal arithmetic, which costs tens of microseconds a call;
the gateway prices twice per request (the hold and the charge) and the billing fold prices every
usage event again (design invariant 1). A `Tariff` turns one `EffectivePrice` into integer
coefficients once, then prices token usage as one exact fraction and rounds it half-up, the same
single rounding as `tally.money.round_nano`.

The Decimal path can round an intermediate quotient (a credit price such as 3 makes 10^9 / 3
inexact), so it equals the exact fraction only up to ~10^-59 relative. Whenever the exact value
lies close enough to a rounding tie for that to matter, and for anything beyond plain token
counts (images, per-request prices), the tariff hands over to `price_usage` itself, so the two
never disagree: the gateway and the fold share this one implementation, and a property test
(tests/unit/test_tariff.py) checks it against `price_usage`.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING

from tally.pricing import Charge, TokenUsage, price_usage

if TYPE_CHECKING:  # pricebook caches tariffs, so it imports this module
    from tally.pricebook import EffectivePrice

# 1 credit = 10^9 nano-credits; prices are USD per 10^6 tokens.
_NANO_PER_MTOK_USD = 1000
# Hand over to Decimal when the exact value is within 10^-30 of a tie (relative to one nano).
_TIE_GUARD = 10**30


def _ratio(value: Decimal) -> Fraction:
    numerator, denominator = value.as_integer_ratio()
    return Fraction(numerator, denominator)


def _round_half_up(numerator: int, denominator: int) -> tuple[int, bool]:
    """(numerator / denominator rounded half away from zero, whether it is near a tie)."""
    sign = -1 if numerator < 0 else 1
    quotient, remainder = divmod(abs(numerator), denominator)
    twice = 2 * remainder
    near_tie = abs(twice - denominator) * _TIE_GUARD < denominator
    return sign * (quotient + (1 if twice >= denominator else 0)), near_tie


class Tariff:
    """What a tenant pays for one model at one price-book version."""

    __slots__ = ("_coefficients", "_den", "_factor", "_fast", "price")

    def __init__(self, price: EffectivePrice) -> None:
        self.price = price
        sheet = price.price
        rates = [
            _ratio(sheet.input_per_mtok),
            _ratio(sheet.cached_input),
            _ratio(sheet.cache_write),
            _ratio(sheet.output_per_mtok),
            _ratio(sheet.reasoning),
        ]
        common = math.lcm(*(r.denominator for r in rates))
        credit = _ratio(price.credit_price_usd)
        # base nano = sum(tokens x rate) x 1000 / credit price, over one common denominator
        scale = _NANO_PER_MTOK_USD * credit.denominator
        self._coefficients = tuple(r.numerator * (common // r.denominator) * scale for r in rates)
        self._den = common * credit.numerator
        # charged nano = base x (100 + margin) / 100
        factor = (100 + _ratio(price.margin_pct)) / 100
        self._factor = (factor.numerator, factor.denominator)
        self._fast = not sheet.per_image and sheet.per_request == 0 and credit > 0

    def charge(self, usage: TokenUsage) -> Charge:
        """Exactly `tally.pricing.price_usage(usage, ...)` for this price."""
        if not self._fast or usage.images:
            return self._slow(usage)
        a, b, c, d, e = self._coefficients
        # Counts and rates are never negative, so the base is a plain floor division.
        numerator = (
            usage.input_tokens * a
            + usage.cached_input_tokens * b
            + usage.cache_write_tokens * c
            + usage.output_tokens * d
            + usage.reasoning_tokens * e
        )
        den = self._den
        if numerator < 0:  # unreachable through validated structs; price_usage rounds it
            return self._slow(usage)
        base, remainder = divmod(numerator, den)
        twice = 2 * remainder
        if abs(twice - den) * _TIE_GUARD < den:
            return self._slow(usage)
        if twice >= den:
            base += 1
        factor_num, factor_den = self._factor
        charged, charge_tie = _round_half_up(numerator * factor_num, den * factor_den)
        if charge_tie:
            return self._slow(usage)
        return Charge(base, charged if charged > 0 else 0)

    def _slow(self, usage: TokenUsage) -> Charge:
        p = self.price
        return price_usage(
            usage, p.price, margin_pct=p.margin_pct, credit_price_usd=p.credit_price_usd
        )
