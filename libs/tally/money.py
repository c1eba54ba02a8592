"""Money: integer nano-credits, exact Decimal arithmetic, one rounding rule.

1 credit = 10**9 nano-credits. Every amount that is stored, summed or compared is an `int` of
nano-credits. Intermediate values (tokens x USD per million tokens x margin / credit price) are
`Decimal` computed in a context wide enough to be exact, and become an `int` exactly once, through
`round_nano` (half-up: ties go away from zero). Floats never appear: parsers refuse them.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Context, Decimal, InvalidOperation, localcontext

NANO_PER_CREDIT = 10**9
CENTS_PER_USD = 100

# 60 significant digits: token counts (< 10**12) x prices (< 10**6, 12 decimals) x margins stay
# far inside it, so no intermediate step of a charge is ever rounded implicitly.
EXACT = Context(prec=60, rounding=ROUND_HALF_UP)

_DECIMAL_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")


class MoneyError(ValueError):
    """A money amount could not be parsed or is out of range."""


def to_decimal(value: Decimal | int | str) -> Decimal:
    """An exact Decimal from an int, a Decimal or plain decimal text ("12.5"); never a float."""
    if isinstance(value, bool) or isinstance(value, float):
        raise MoneyError("money is never a float: pass a str, int or Decimal")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise MoneyError(f"not a finite amount: {value}")
        return value
    if isinstance(value, int):
        return Decimal(value)
    text = value.strip().replace("_", "")
    if not _DECIMAL_TEXT.match(text):
        raise MoneyError(f"not a decimal amount: {value!r}")
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex already rules this out
        raise MoneyError(f"not a decimal amount: {value!r}") from None


_ONE = Decimal(1)


def round_nano(amount: Decimal) -> int:
    """The single rounding rule: a Decimal amount of nano-credits to a whole nano, half-up."""
    # The context argument instead of `localcontext`: same rules, a fraction of the cost on a
    # path the fold runs for every request.
    return int(amount.quantize(_ONE, rounding=ROUND_HALF_UP, context=EXACT))


def credits_to_nano(credits: Decimal | int | str) -> int:
    """Exact conversion of credits to nano-credits; more than 9 decimals is an error."""
    amount = to_decimal(credits)
    with localcontext(EXACT):
        nano = amount * NANO_PER_CREDIT
    if nano != nano.to_integral_value():
        raise MoneyError(f"{credits} credits is finer than one nano-credit")
    return int(nano)


def parse_credits(text: str) -> int:
    """Parse user input such as "12", "0.5" or "1_000" credits into nano-credits."""
    return credits_to_nano(text)


def format_credits(nano: int, *, places: int = 9) -> str:
    """Nano-credits as a decimal credit amount with `places` decimals (exact when places=9)."""
    if not 0 <= places <= 9:
        raise MoneyError("places must be between 0 and 9")
    with localcontext(EXACT):
        amount = Decimal(nano) / NANO_PER_CREDIT
        return f"{amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP):f}"


def usd_to_nano(usd: Decimal | int | str, credit_price_usd: Decimal | int | str) -> int:
    """USD to nano-credits at the given credit price (USD per credit), rounded once."""
    price = to_decimal(credit_price_usd)
    if price <= 0:
        raise MoneyError("the credit price must be positive")
    with localcontext(EXACT):
        return round_nano(to_decimal(usd) * NANO_PER_CREDIT / price)


def nano_to_usd(nano: int, credit_price_usd: Decimal | int | str) -> Decimal:
    """The exact USD value of nano-credits at the given credit price (not rounded)."""
    with localcontext(EXACT):
        return Decimal(nano) * to_decimal(credit_price_usd) / NANO_PER_CREDIT


def parse_usd(text: str) -> Decimal:
    """Parse a USD amount such as "12.34" or "$0.0025" exactly."""
    return to_decimal(text.strip().removeprefix("$"))


def format_usd(amount: Decimal, *, places: int = 2) -> str:
    """A USD amount for people: "$1,234.57" (half-up at `places` decimals)."""
    with localcontext(EXACT):
        q = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    sign = "-" if q < 0 else ""
    return f"{sign}${abs(q):,.{places}f}"


def usd_to_cents(amount: Decimal) -> int:
    """USD to whole cents (Stripe's unit), half-up."""
    with localcontext(EXACT):
        return int((amount * CENTS_PER_USD).quantize(Decimal(1), rounding=ROUND_HALF_UP))
