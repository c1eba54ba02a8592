"""The gateway's errors: each one becomes an OpenAI-shaped error body with its HTTP status."""

from __future__ import annotations

from tally.errors import TallyError


class GatewayError(TallyError):
    """Base of the gateway's errors; `headers` go out with the error response."""

    headers: dict[str, str] | None = None


class InvalidRequest(GatewayError):
    code = "invalid_request"


class RequestTooLarge(GatewayError):
    status_code = 413
    code = "request_too_large"


class InvalidApiKey(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class ModelNotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NotFound(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status_code = 405
    code = "method_not_allowed"


class InsufficientCredits(GatewayError):
    """A prepaid tenant's available credits do not cover the request's worst-case cost."""

    status_code = 402
    error_type = "insufficient_quota"
    code = "insufficient_credits"


class SpendCapReached(GatewayError):
    """A metered tenant's monthly budget cap, or a key's spend cap, would be exceeded."""

    status_code = 402
    error_type = "insufficient_quota"
    code = "spend_cap_reached"


class RateLimited(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, headers: dict[str, str]) -> None:
        super().__init__(message)
        self.headers = headers


class UpstreamFailed(GatewayError):
    """Every route of the model failed (or the provider rejected the request)."""

    status_code = 502
    error_type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status: int = 502,
        code: str | None = None,
        error_type: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, code=code or self.code, param=param)
        self.status_code = status
        if error_type:
            self.error_type = error_type


class Unavailable(GatewayError):
    """Postgres or Redis cannot be reached: paid work is refused, never served unmetered."""

    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"
