"""The error family every service raises, and the one error shape every API answers with.

All HTTP errors look like OpenAI's: `{"error": {"message", "type", "param", "code"}}`, so a
customer's client library parses the gateway's errors and the admin APIs' errors alike.
"""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct, frozen=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(msgspec.Struct, frozen=True):
    error: ErrorBody


class TallyError(Exception):
    """Base of every domain error; carries its HTTP status and error code."""

    status_code = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> ErrorResponse:
        return ErrorResponse(ErrorBody(self.message, self.error_type, self.param, self.code))


class InvalidRequest(TallyError):
    code = "invalid_request"


class NotFound(TallyError):
    status_code = 404
    code = "not_found"


class Conflict(TallyError):
    status_code = 409
    code = "conflict"


class Unauthorized(TallyError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(TallyError):
    status_code = 403
    error_type = "permission_error"
    code = "forbidden"


class ServiceUnavailable(TallyError):
    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"
