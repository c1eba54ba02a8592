"""VAT on invoices and credit notes: which rate applies, and splitting a paid amount.

Amounts paid through checkout are what the customer paid, tax included, so the tax is taken
out of the gross: net = gross x 100 / (100 + rate), rounded half-up to the currency's minor unit
once per line, and tax = gross - net, so net + tax = gross on every line and the lines sum to
the totals exactly.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal, localcontext

import msgspec

from billing.finance.config import FinanceConfig
from tally.money import EXACT

# EU member states by ISO 3166-1 code (Greece's VAT ids start "EL"; its country code is GR).
EU_COUNTRIES = frozenset(
    "AT BE BG CY CZ DE DK EE ES FI FR GR HR HU IE IT LT LU LV MT NL PL PT RO SE SI SK".split()
)

REVERSE_CHARGE_NOTE = (
    "Reverse charge: VAT to be accounted for by the recipient"
    " (Article 196, Council Directive 2006/112/EC)."
)

# Currencies without a minor unit (Stripe's zero-decimal list, the ones a platform may price in).
_ZERO_DECIMAL = frozenset("BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split())
_THREE_DECIMAL = frozenset("BHD JOD KWD OMR TND".split())


def currency_exponent(currency: str) -> int:
    """Digits after the decimal point of `currency`'s minor unit (EUR 2, JPY 0, KWD 3)."""
    code = currency.upper()
    if code in _ZERO_DECIMAL:
        return 0
    if code in _THREE_DECIMAL:
        return 3
    return 2


def format_minor(amount_minor: int, currency: str) -> str:
    """Minor units as a plain decimal string: 123456 EUR -> "1234.56" (exact, no grouping)."""
    places = currency_exponent(currency)
    with localcontext(EXACT):
        value = Decimal(amount_minor).scaleb(-places)
    return f"{value:.{places}f}"


class TaxTreatment(msgspec.Struct, frozen=True):
    """The rate a document line is taxed at, and the wording the document must carry."""

    rate_pct: Decimal
    reverse_charge: bool = False
    note: str | None = None


def tax_treatment(
    config: FinanceConfig, customer_country: str | None, customer_tax_id: str | None
) -> TaxTreatment:
    """The VAT treatment of a sale to this customer.

    A business customer (it has a tax id) in another EU country than the issuer: reverse
    charge, 0 % and the Article 196 wording. Otherwise the rate of the customer's country from
    `TALLY_TAX_RATES` (destination principle for digital services), then the `*` default, then
    the issuer's country's rate when the customer's country is unknown, else 0 %.
    """
    issuer_country = config.issuer.country
    country = (customer_country or "").strip().upper() or None
    if (
        country is not None
        and customer_tax_id
        and issuer_country in EU_COUNTRIES
        and country in EU_COUNTRIES
        and country != issuer_country
    ):
        return TaxTreatment(Decimal(0), reverse_charge=True, note=REVERSE_CHARGE_NOTE)
    rates = config.tax_rates
    if country is not None and country in rates:
        return TaxTreatment(rates[country])
    if "*" in rates:
        return TaxTreatment(rates["*"])
    if country is None and issuer_country is not None and issuer_country in rates:
        return TaxTreatment(rates[issuer_country])
    return TaxTreatment(Decimal(0))


def net_of_gross(gross_minor: int, rate_pct: Decimal) -> int:
    """The net part of a tax-inclusive amount, rounded half-up (away from zero) to minor units."""
    with localcontext(EXACT):
        net = Decimal(gross_minor) * 100 / (100 + rate_pct)
        return int(net.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def split_gross(gross_minor: int, rate_pct: Decimal) -> tuple[int, int]:
    """(net, tax) of a tax-inclusive amount; they always add up to `gross_minor`."""
    net = net_of_gross(gross_minor, rate_pct)
    return net, gross_minor - net
