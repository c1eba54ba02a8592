"""Billing's errors: one family, mapped to the HTTP error shape by tally.http."""

from __future__ import annotations

from tally.errors import Conflict, InvalidRequest, NotFound, TallyError


class BillingError(TallyError):
    """Base of every billing error."""


class InvalidBillingRequest(BillingError, InvalidRequest):
    """The request is well-formed JSON but its values make no sense (400)."""


class PriceBelowCost(BillingError):
    """A price or margin would make some tenant pay less than the provider's base cost."""

    status_code = 400
    code = "price_below_cost"


class UnknownTenant(BillingError, NotFound):
    code = "tenant_not_found"


class UnknownModel(BillingError, NotFound):
    code = "model_not_priced"


class AlertNotConfigured(BillingError, NotFound):
    code = "alert_not_found"


class BillingConflict(BillingError, Conflict):
    """The request conflicts with the current state (409)."""


class FoldLayoutMismatch(BillingError):
    """TALLY_FOLD_SHARDS differs from the shard count the fold checkpoints were written with."""

    status_code = 500
    error_type = "server_error"
    code = "fold_layout_mismatch"
