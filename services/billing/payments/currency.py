"""Currency amounts as Stripe takes them: integers in the currency's smallest unit.

Most currencies have 2 decimals (cents); Stripe lists the zero-decimal ones (JPY, KRW, ...) and
three-decimal ones (KWD, ...) separately. Conversions are exact Decimal arithmetic; a price with
more decimals than its currency has is refused rather than rounded.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext

from tally.money import EXACT, MoneyError, to_decimal

# docs.stripe.com/currencies#zero-decimal and #three-decimal
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())
_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "inr": "₹"}
_CURRENCY = re.compile(r"^[a-z]{3}$")


def normalise_currency(code: str) -> str:
    """A three-letter ISO code, lowercase as Stripe wants it."""
    code = code.strip().lower()
    if not _CURRENCY.match(code):
        raise MoneyError(f"not a currency code: {code!r}")
    return code


def decimals(currency: str) -> int:
    if currency in ZERO_DECIMAL:
        return 0
    if currency in THREE_DECIMAL:
        return 3
    return 2


def to_minor(amount: Decimal | int | str, currency: str) -> int:
    """ "12.34" USD -> 1234; refuses sub-unit precision ("12.345" USD) instead of rounding."""
    value = to_decimal(amount)
    with localcontext(EXACT):
        minor = value.scaleb(decimals(currency))
    if minor != minor.to_integral_value():
        raise MoneyError(f"{amount} has more decimals than {currency.upper()} allows")
    return int(minor)


def from_minor(amount_minor: int, currency: str) -> Decimal:
    with localcontext(EXACT):
        return Decimal(amount_minor).scaleb(-decimals(currency))


def format_minor(amount_minor: int, currency: str) -> str:
    """1234 usd -> "$12.34"; 500 jpy -> "¥500"; 1234 chf -> "12.34 CHF"."""
    places = decimals(currency)
    value = from_minor(abs(amount_minor), currency)
    sign = "-" if amount_minor < 0 else ""
    text = f"{value:,.{places}f}"
    symbol = _SYMBOLS.get(currency)
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {currency.upper()}"
