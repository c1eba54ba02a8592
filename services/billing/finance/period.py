"""Accounting periods: calendar months in the finance time zone (`TALLY_FINANCE_TIMEZONE`)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec

from billing.finance.errors import InvalidPeriod, PeriodNotStarted

_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


class Period(msgspec.Struct, frozen=True, order=True):
    """One calendar month, e.g. `2026-03`."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Period:
        """Parse `YYYY-MM`; anything else is a 400 naming the parameter."""
        match = _PERIOD.match(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise InvalidPeriod(f"period must look like YYYY-MM, got {text!r}", param="period")
        year, month = int(match.group(1)), int(match.group(2))
        if not 1 <= month <= 12 or year < 2000:
            raise InvalidPeriod(f"no such period: {text!r}", param="period")
        return cls(year, month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    def next(self) -> Period:
        return Period(self.year + self.month // 12, self.month % 12 + 1)

    def previous(self) -> Period:
        return Period(self.year - (self.month == 1), (self.month - 2) % 12 + 1)

    def starts_at(self, tz: ZoneInfo) -> datetime:
        """The first instant of the month in `tz`, as an aware UTC datetime."""
        return datetime(self.year, self.month, 1, tzinfo=tz).astimezone(UTC)

    def ends_at(self, tz: ZoneInfo) -> datetime:
        """The first instant after the month (exclusive end)."""
        return self.next().starts_at(tz)


def period_of(at: datetime, tz: ZoneInfo) -> Period:
    local = at.astimezone(tz)
    return Period(local.year, local.month)


def local_date(at: datetime, tz: ZoneInfo) -> date:
    return at.astimezone(tz).date()


def require_started(period: Period, tz: ZoneInfo, now: datetime) -> None:
    """A period in the future has nothing to show: 400 rather than an empty document."""
    if period.starts_at(tz) > now:
        raise PeriodNotStarted(f"period {period} has not started yet", param="period")


def last_ended(now: datetime, tz: ZoneInfo, grace: timedelta = timedelta(0)) -> Period:
    """The latest period that ended at least `grace` before `now`."""
    return period_of(now - grace, tz).previous()
