"""Test connection: ask the provider for its model list, the cheapest authenticated call.

Listing models costs nothing, needs a valid credential, and exists on every provider's API in
some form. The answer is reduced to an outcome and the HTTP status: the provider's own error
text is not passed on, since some providers echo (part of) the key they were sent.
"""

from __future__ import annotations

import re
import time
from typing import Any

import aiohttp
import msgspec

from tenant.providers.schemas import ConnectionTest

# Each kind's public API base, as the credential's `base_url` would give it. The gateway uses the
# same convention: OpenAI-style bases end in their version segment, Anthropic's does not.
DEFAULT_BASE_URLS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com/v1beta",
    "deepseek": "https://api.deepseek.com",
    "ollama": "http://localhost:11434/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "xai": "https://api.x.ai/v1",
    "doubao": "https://ark.cn-beijing.volces.com/api/v3",
    "poe": "https://api.poe.com/v1",
}
ANTHROPIC_VERSION = "2023-06-01"
_ERROR_CODE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def probe_request(kind: str, base_url: str, api_key: str) -> tuple[str, dict[str, str]]:
    """The URL and headers of the model-list call for a kind (not for Bedrock)."""
    base = base_url.rstrip("/")
    if kind == "anthropic":
        return f"{base}/v1/models", {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}
    if kind == "gemini":
        return f"{base}/models", {"x-goog-api-key": api_key}
    # Every other kind speaks the OpenAI wire format.
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return f"{base}/models", headers


def _gemini_key_invalid(body: bytes) -> bool:
    """Gemini answers a bad key with 400 INVALID_ARGUMENT and reason API_KEY_INVALID."""
    try:
        document: Any = msgspec.json.decode(body)
        details = document["error"]["details"]
        return any(d.get("reason") == "API_KEY_INVALID" for d in details)
    except (msgspec.DecodeError, KeyError, TypeError, AttributeError):
        return False


def _error_code(body: bytes) -> str | None:
    """A short machine-readable error code from the provider's body, if it has one."""
    try:
        document: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(error, dict):
        for field in ("code", "status", "type"):
            value = error.get(field)
            if isinstance(value, str) and _ERROR_CODE.match(value):
                return value
    return None


async def probe_credential(
    http: aiohttp.ClientSession,
    *,
    kind: str,
    base_url: str | None,
    secret: dict[str, str],
    timeout_seconds: float,
) -> ConnectionTest:
    """Call the provider's model list with the credential and report what happened."""
    started = time.perf_counter()

    def elapsed() -> int:
        return round((time.perf_counter() - started) * 1000)

    if kind == "bedrock":
        return ConnectionTest(
            ok=False,
            outcome="unsupported",
            status=None,
            latency_ms=0,
            message="test connection is not available for bedrock (SigV4); the gateway disables"
            " the credential on its first 401/403",
        )
    url, headers = probe_request(kind, base_url or DEFAULT_BASE_URLS[kind], secret["api_key"])
    try:
        async with http.get(
            url,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            allow_redirects=False,
        ) as response:
            body = await response.content.read(64 * 1024)
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return ConnectionTest(
            ok=False,
            outcome="unreachable",
            status=None,
            latency_ms=elapsed(),
            message=f"could not reach the provider: {type(exc).__name__}",
        )
    if 200 <= status < 300:
        return ConnectionTest(
            ok=True, outcome="ok", status=status, latency_ms=elapsed(), message="credential works"
        )
    code = _error_code(body)
    detail = f" ({code})" if code else ""
    if status in (401, 403) or (kind == "gemini" and _gemini_key_invalid(body)):
        return ConnectionTest(
            ok=False,
            outcome="rejected",
            status=status,
            latency_ms=elapsed(),
            message=f"the provider refused the credential: HTTP {status}{detail}",
        )
    return ConnectionTest(
        ok=False,
        outcome="error",
        status=status,
        latency_ms=elapsed(),
        message=f"the provider answered HTTP {status}{detail}",
    )
