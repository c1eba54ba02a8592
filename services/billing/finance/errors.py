"""The finance error family, mapped to the API error shape by tally.http."""

from __future__ import annotations

from tally.errors import NotFound, TallyError


class FinanceError(TallyError):
    """Base of finance's errors."""


class InvalidPeriod(FinanceError):
    code = "invalid_period"


class PeriodNotStarted(FinanceError):
    code = "period_not_started"


class PeriodNotEnded(FinanceError):
    status_code = 409
    code = "period_not_ended"


class UnknownTenant(NotFound):
    code = "tenant_not_found"


class DocumentNotFound(NotFound):
    code = "document_not_found"


class InvalidFormat(FinanceError):
    code = "invalid_format"


class CloseDeferred(FinanceError):
    """A period's purchases or refunds are not all visible yet (a transaction still running)."""

    status_code = 409
    code = "close_deferred"
