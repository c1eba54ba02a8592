"""VAT treatment and rounding, currencies, and accounting periods."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from billing.finance.config import build_finance_config, parse_tax_rates
from billing.finance.errors import InvalidPeriod, PeriodNotStarted
from billing.finance.period import Period, period_of, require_started
from billing.finance.vat import (
    REVERSE_CHARGE_NOTE,
    currency_exponent,
    format_minor,
    split_gross,
    tax_treatment,
)
from tally.config import SettingsError, load_settings


def config(**env: str):  # type: ignore[no-untyped-def]
    base = {
        "TALLY_TAX_RATES": "DE:19,FR:20,AT:20",
        "TALLY_ISSUER_NAME": "Tally GmbH",
        "TALLY_ISSUER_COUNTRY": "DE",
        "TALLY_ISSUER_TAX_ID": "DE123456789",
    }
    return build_finance_config(load_settings({**base, **env}))


def test_domestic_and_b2c_sales_pay_the_customers_country_rate() -> None:
    cfg = config()
    assert tax_treatment(cfg, "DE", "DE999").rate_pct == 19
    assert tax_treatment(cfg, "FR", None).rate_pct == 20
    assert not tax_treatment(cfg, "FR", None).reverse_charge


def test_eu_business_in_another_country_is_reverse_charged() -> None:
    treatment = tax_treatment(config(), "FR", "FR12345678901")
    assert treatment.reverse_charge
    assert treatment.rate_pct == 0
    assert treatment.note == REVERSE_CHARGE_NOTE


def test_unlisted_countries_use_the_default_rate_then_zero() -> None:
    assert tax_treatment(config(), "US", None).rate_pct == 0
    assert tax_treatment(config(TALLY_TAX_RATES="DE:19,*:7"), "US", None).rate_pct == 7
    # No country known: the issuer's country rate (a domestic sale is presumed).
    assert tax_treatment(config(), None, None).rate_pct == 19


@given(st.integers(-(10**12), 10**12), st.decimals(0, 30, places=1))
def test_net_and_tax_always_add_up_to_gross(gross: int, rate: Decimal) -> None:
    net, tax = split_gross(gross, rate)
    assert net + tax == gross
    assert abs(tax) <= abs(gross)


def test_tax_is_rounded_half_up_once_per_line() -> None:
    assert split_gross(11900, Decimal(19)) == (10000, 1900)
    # 1.00 incl. 19 %: net 0.8403... -> 0.84
    assert split_gross(100, Decimal(19)) == (84, 16)
    # 0.05 incl. 25 %: net exactly 0.04
    assert split_gross(5, Decimal(25)) == (4, 1)
    # half-up: 0.03 incl. 50 % -> net 0.02 exactly; 0.01 incl. 100/3 % ...
    assert split_gross(1, Decimal(100)) == (1, 0)  # 0.005 rounds up to 0.01


def test_currency_minor_units() -> None:
    assert currency_exponent("eur") == 2
    assert currency_exponent("JPY") == 0
    assert format_minor(123456, "EUR") == "1234.56"
    assert format_minor(-5, "EUR") == "-0.05"
    assert format_minor(1234, "JPY") == "1234"
    assert format_minor(1234, "KWD") == "1.234"


@pytest.mark.parametrize(
    "text", ["2025-13", "2025-00", "25-01", "2025/01", "", "abcd-ef", "1999-12"]
)
def test_malformed_periods_are_refused(text: str) -> None:
    with pytest.raises(InvalidPeriod):
        Period.parse(text)


def test_periods_follow_the_finance_time_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    march = Period.parse("2025-03")
    assert march.starts_at(berlin) == datetime(2025, 2, 28, 23, 0, tzinfo=UTC)
    assert march.ends_at(berlin) == datetime(2025, 3, 31, 22, 0, tzinfo=UTC)  # DST began
    assert period_of(datetime(2025, 3, 31, 22, 30, tzinfo=UTC), berlin) == Period(2025, 4)
    assert Period(2025, 12).next() == Period(2026, 1)
    assert Period(2025, 1).previous() == Period(2024, 12)


def test_future_periods_are_refused() -> None:
    with pytest.raises(PeriodNotStarted):
        require_started(Period(2099, 1), ZoneInfo("UTC"), datetime.now(UTC))


def test_bad_finance_settings_name_their_variable() -> None:
    with pytest.raises(SettingsError, match="TALLY_TAX_RATES"):
        parse_tax_rates("DE=19")
    with pytest.raises(SettingsError, match="TALLY_FINANCE_TIMEZONE"):
        config(TALLY_FINANCE_TIMEZONE="Mars/Olympus")
    with pytest.raises(SettingsError, match="TALLY_ISSUER_LOGO_PATH"):
        config(TALLY_ISSUER_LOGO_PATH="/nonexistent/logo.png")
    assert msgspec.to_builtins(config().issuer)["country"] == "DE"


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Asia/Kathmandu", "Australia/Adelaide"])
def test_a_time_zone_whose_months_do_not_start_on_a_whole_utc_hour_is_refused(zone: str) -> None:
    # Usage comes from hourly UTC rollups: such a month could not be cut from them exactly.
    with pytest.raises(SettingsError, match="TALLY_FINANCE_TIMEZONE") as refused:
        config(TALLY_FINANCE_TIMEZONE=zone)
    assert "whole hour" in str(refused.value)


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Tokyo"])
def test_whole_hour_time_zones_are_accepted(zone: str) -> None:
    assert config(TALLY_FINANCE_TIMEZONE=zone).timezone == zone
