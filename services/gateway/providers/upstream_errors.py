"""Provider errors in the terms the gateway answers with (OpenAI error types)."""

from __future__ import annotations

import json
from typing import Any

from .base import UpstreamError

# OpenAI's error `type` for a status, so the gateway can relay a provider's error in the
# caller's format without knowing the provider.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def is_retryable(status: int) -> bool:
    """Worth another attempt (the same or the next credential): timeouts, rate limits, 5xx."""
    return status in (408, 429) or status >= 500


def upstream_error(status: int, message: str, code: str | None) -> UpstreamError:
    return UpstreamError(
        status=status,
        message=message,
        type=error_type_for(status),
        code=code,
        retryable=is_retryable(status),
    )


def json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def body_excerpt(body: bytes) -> str:
    """A non-JSON error body, shortened to something a log line and a client can carry."""
    text = body.decode("utf-8", errors="replace").strip()
    return text[:500] if text else "(empty error body)"
