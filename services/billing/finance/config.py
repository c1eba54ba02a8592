"""Finance settings, parsed once and checked: tax rates, the issuer, the calendar, fonts."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from tally.config import Settings, SettingsError

_COUNTRY = re.compile(r"^[A-Z]{2}$")


class Party(msgspec.Struct, frozen=True, kw_only=True):
    """A name and address on a document: the issuer or the customer."""

    name: str
    address_lines: list[str] = msgspec.field(default_factory=list)
    country: str | None = None
    tax_id: str | None = None
    email: str | None = None


class FinanceConfig(msgspec.Struct, frozen=True, kw_only=True):
    timezone: str
    close_grace_minutes: int
    tax_rates: dict[str, Decimal]
    issuer: Party
    logo_path: str | None
    font_path: str | None
    font_bold_path: str | None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def issuer_key(self) -> str:
        """Invoice numbers run per issuer: its tax id, or its name when it has none."""
        return self.issuer.tax_id or self.issuer.name or "default"


def parse_tax_rates(text: str) -> dict[str, Decimal]:
    """`DE:19,FR:20,*:0` -> {"DE": 19, "FR": 20, "*": 0}; a bad entry names the variable."""
    rates: dict[str, Decimal] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        country, _, rate_text = entry.partition(":")
        country = country.strip().upper()
        try:
            rate = Decimal(rate_text.strip())
        except InvalidOperation:
            rate = Decimal(-1)
        if not (_COUNTRY.match(country) or country == "*") or not (0 <= rate < 100):
            raise SettingsError(
                f"TALLY_TAX_RATES: expected COUNTRY:PERCENT entries (e.g. DE:19), got {entry!r}"
            )
        rates[country] = rate
    return rates


def _optional_file(variable: str, path: str) -> str | None:
    if not path:
        return None
    if not Path(path).is_file():
        raise SettingsError(f"{variable}: no such file: {path}")
    return path


def _require_whole_hour_month_starts(timezone: str) -> None:
    # Finance reads usage from billing's rollups, which are hourly in UTC: a month can only be
    # cut from them exactly if it starts on a whole UTC hour. Refuse a zone where it does not
    # (Asia/Kolkata, Asia/Kathmandu, Australia/Adelaide, ...) instead of misplacing usage.
    tz = ZoneInfo(timezone)
    for year in range(2000, 2101):
        for month in range(1, 13):
            offset = datetime(year, month, 1, tzinfo=tz).utcoffset() or timedelta(0)
            if offset % timedelta(hours=1):
                raise SettingsError(
                    f"TALLY_FINANCE_TIMEZONE: {timezone!r} starts {year:04d}-{month:02d} at a"
                    f" UTC offset of {offset}, not a whole hour; finance months are cut from"
                    " hourly usage rollups, so choose a zone whose offset is whole hours"
                    " (e.g. UTC, Europe/Berlin, America/New_York)"
                )


def build_finance_config(settings: Settings) -> FinanceConfig:
    """Check and parse the finance settings; raise `SettingsError` naming a bad variable."""
    try:
        ZoneInfo(settings.finance_timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"TALLY_FINANCE_TIMEZONE: unknown time zone {settings.finance_timezone!r}"
        ) from None
    _require_whole_hour_month_starts(settings.finance_timezone)
    country = settings.issuer_country.strip().upper() or None
    if country is not None and not _COUNTRY.match(country):
        raise SettingsError("TALLY_ISSUER_COUNTRY: expected a two-letter country code")
    issuer = Party(
        name=settings.issuer_name.strip(),
        address_lines=[line.strip() for line in settings.issuer_address.split("|") if line.strip()],
        country=country,
        tax_id=settings.issuer_tax_id.strip() or None,
        email=settings.issuer_email.strip() or None,
    )
    return FinanceConfig(
        timezone=settings.finance_timezone,
        close_grace_minutes=settings.finance_close_grace_minutes,
        tax_rates=parse_tax_rates(settings.tax_rates),
        issuer=issuer,
        logo_path=_optional_file("TALLY_ISSUER_LOGO_PATH", settings.issuer_logo_path),
        font_path=_optional_file("TALLY_INVOICE_FONT_PATH", settings.invoice_font_path),
        font_bold_path=_optional_file(
            "TALLY_INVOICE_FONT_BOLD_PATH", settings.invoice_font_bold_path
        ),
    )


@lru_cache(maxsize=8)
def finance_config(settings: Settings) -> FinanceConfig:
    """The finance settings of `settings`, parsed once per settings object."""
    return build_finance_config(settings)
