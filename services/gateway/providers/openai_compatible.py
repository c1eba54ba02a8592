"""Every provider that speaks OpenAI's wire format: OpenAI, DeepSeek, OpenRouter, xAI, Ollama,
Doubao (Volcengine Ark) and Poe. One adapter class; each kind differs only in its `Quirks`.

Bodies pass through untouched (tools, JSON mode, image parts, provider-specific fields) except
for `model`, which becomes the route's upstream model, and `stream_options.include_usage`, which
the gateway always asks for so that every streamed request can be metered.

Usage normalisation into the disjoint `TokenUsage` (see /work/shared/reference/providers.md):
`prompt_tokens` includes cached (and cache-write) tokens, `completion_tokens` includes reasoning
tokens, except on xAI, which reports reasoning beside `completion_tokens`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from gateway.providers.base import (
    MODEL_MAX_OUTPUT_KEY,
    ChatResult,
    CompletionsAdapter,
    Credential,
    UnsupportedFeature,
    UpstreamError,
    UpstreamRequest,
)
from gateway.providers.sse import SSEDecoder
from tally.pricing import TokenUsage

_decode = msgspec.json.decode
_encode = msgspec.json.encode

CHAT = "chat"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
IMAGES = "images"
_PATHS = {
    CHAT: "/chat/completions",
    COMPLETIONS: "/completions",
    EMBEDDINGS: "/embeddings",
    IMAGES: "/images/generations",
}
DEFAULT_IMAGE_SIZE = "1024x1024"


class Quirks(msgspec.Struct, frozen=True, kw_only=True):
    """How one OpenAI-wire provider differs from OpenAI itself."""

    kind: str
    label: str
    base_url: str
    features: frozenset[str]
    # A local Ollama ignores keys; everyone else needs `Authorization: Bearer`.
    key_required: bool = True
    # xAI counts reasoning tokens beside completion_tokens, not inside them.
    reasoning_outside_completion: bool = False
    # Statuses that mean "this credential's account cannot pay", not "the request is wrong":
    # fail over to another credential instead of blaming the client.
    account_statuses: frozenset[int] = frozenset()


QUIRKS: dict[str, Quirks] = {
    q.kind: q
    for q in (
        Quirks(
            kind="openai",
            label="OpenAI",
            base_url="https://api.openai.com/v1",
            features=frozenset({CHAT, COMPLETIONS, EMBEDDINGS, IMAGES}),
        ),
        Quirks(
            kind="deepseek",
            label="DeepSeek",
            base_url="https://api.deepseek.com",
            features=frozenset({CHAT}),
            account_statuses=frozenset({402}),
        ),
        Quirks(
            kind="openrouter",
            label="OpenRouter",
            base_url="https://openrouter.ai/api/v1",
            features=frozenset({CHAT, COMPLETIONS, EMBEDDINGS}),
            account_statuses=frozenset({402}),
        ),
        Quirks(
            kind="xai",
            label="xAI",
            base_url="https://api.x.ai/v1",
            features=frozenset({CHAT, IMAGES}),
            reasoning_outside_completion=True,
        ),
        Quirks(
            kind="ollama",
            label="Ollama",
            base_url="http://localhost:11434/v1",
            features=frozenset({CHAT, COMPLETIONS, EMBEDDINGS, IMAGES}),
            key_required=False,
        ),
        Quirks(
            kind="doubao",
            label="Doubao (Volcengine Ark)",
            base_url="https://ark.cn-beijing.volces.com/api/v3",
            features=frozenset({CHAT, EMBEDDINGS, IMAGES}),
        ),
        Quirks(
            kind="poe",
            label="Poe",
            base_url="https://api.poe.com/v1",
            features=frozenset({CHAT}),
            account_statuses=frozenset({402}),
        ),
    )
}


def _int(value: Any) -> int:
    # Providers send null, floats ("12.0") or nothing at all for counts they do not track.
    if isinstance(value, bool) or value is None:
        return 0
    if isinstance(value, int):
        return max(0, value)
    if isinstance(value, float):
        return max(0, int(value))
    return 0


def _details(usage: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    details = usage.get(name)
    return details if isinstance(details, dict) else {}


def normalise_usage(usage: Mapping[str, Any], quirks: Quirks) -> TokenUsage:
    """An OpenAI-wire `usage` object as disjoint `TokenUsage` counts."""
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    prompt_details = _details(usage, "prompt_tokens_details")
    completion_details = _details(usage, "completion_tokens_details")
    # DeepSeek's own field is authoritative; prompt_tokens_details.cached_tokens mirrors it.
    cached = _int(usage.get("prompt_cache_hit_tokens", prompt_details.get("cached_tokens")))
    cache_write = _int(prompt_details.get("cache_write_tokens"))
    reasoning = _int(completion_details.get("reasoning_tokens"))
    cached = min(cached, prompt)
    cache_write = min(cache_write, prompt - cached)
    if quirks.reasoning_outside_completion:
        total = _int(usage.get("total_tokens"))
        # xAI puts reasoning beside completion_tokens (total = prompt + completion + reasoning);
        # if a response ever counts it inside instead, the total says so.
        inside = total > 0 and total == prompt + completion and reasoning > 0
        output = completion - min(reasoning, completion) if inside else completion
    else:
        reasoning = min(reasoning, completion)
        output = completion - reasoning
    return TokenUsage(
        input_tokens=prompt - cached - cache_write,
        cached_input_tokens=cached,
        cache_write_tokens=cache_write,
        output_tokens=output,
        reasoning_tokens=reasoning,
    )


def image_price_key(request_body: Mapping[str, Any]) -> str:
    """The price-sheet key of the images a request asks for: "SIZE" or "SIZE/QUALITY"."""
    size = request_body.get("size")
    size = size if isinstance(size, str) and size else DEFAULT_IMAGE_SIZE
    quality = request_body.get("quality")
    return f"{size}/{quality}" if isinstance(quality, str) and quality else size


class OpenAIStreamTranslator:
    """An OpenAI-wire SSE stream → chunk dicts, with usage and in-stream errors picked out.

    Comment lines (`: keep-alive` from DeepSeek, `: OPENROUTER PROCESSING`) are skipped by the
    SSE decoder. `model` is rewritten to the public model name so routing never leaks.
    """

    def __init__(self, model: str, quirks: Quirks) -> None:
        self._model = model
        self._quirks = quirks
        self._sse = SSEDecoder()
        self.usage: TokenUsage | None = None
        self.error: UpstreamError | None = None
        self.done = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        return self._chunks(self._sse.feed(data))

    def finish(self) -> list[dict[str, Any]]:
        return self._chunks(self._sse.flush())

    def _chunks(self, events: list[Any]) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for event in events:
            data: bytes = event.data
            if data == b"[DONE]":
                self.done = True
                continue
            if not data or self.done:
                continue
            try:
                chunk = _decode(data)
            except msgspec.DecodeError:
                self.error = UpstreamError(
                    502, f"{self._quirks.label} sent a malformed stream event", code="bad_upstream"
                )
                continue
            if not isinstance(chunk, dict):
                continue
            if "error" in chunk and not chunk.get("choices"):
                self.error = _error_from_payload(chunk, 0, self._quirks, in_stream=True)
                continue
            usage = chunk.get("usage")
            if isinstance(usage, dict):
                self.usage = normalise_usage(usage, self._quirks)
            if "model" in chunk:
                chunk["model"] = self._model
            chunks.append(chunk)
        return chunks


def _error_from_payload(
    payload: Any, status: int, quirks: Quirks, *, in_stream: bool = False
) -> UpstreamError:
    error = payload.get("error") if isinstance(payload, dict) else None
    message, type_, code = "", "upstream_error", None
    if isinstance(error, dict):
        message = str(error.get("message") or "")
        type_ = str(error.get("type") or type_)
        raw_code = error.get("code")
        # OpenRouter's code is the HTTP status as an int; OpenAI's is a string like
        # "context_length_exceeded".
        if isinstance(raw_code, int) and not isinstance(raw_code, bool):
            if status == 0 and 400 <= raw_code < 600:
                status = raw_code
        elif raw_code is not None:
            code = str(raw_code)
    elif isinstance(error, str):
        message = error
    elif isinstance(payload, dict) and isinstance(payload.get("message"), str):
        message = payload["message"]
    if in_stream and status == 0:
        status = 502
    message = message or f"{quirks.label} answered HTTP {status}"
    retryable = True if status in quirks.account_statuses else None
    return UpstreamError(status, message, type=type_, code=code, retryable=retryable)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name in ("retry-after-ms", "Retry-After-Ms"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                pass
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            return None
    return None


class OpenAICompatibleAdapter:
    """The adapter of one OpenAI-wire provider kind."""

    def __init__(self, quirks: Quirks) -> None:
        self.kind = quirks.kind
        self.quirks = quirks

    # --- requests ---------------------------------------------------------------------------

    def _request(
        self, feature: str, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        if feature not in self.quirks.features:
            raise UnsupportedFeature(
                f"{self.quirks.label} does not offer {_PATHS[feature]}; "
                "route this model to a provider that does"
            )
        base = (cred.base_url or self.quirks.base_url).rstrip("/")
        headers = {"content-type": "application/json", "accept": "application/json"}
        if cred.api_key:
            headers["authorization"] = f"Bearer {cred.api_key}"
        elif self.quirks.key_required:
            raise UpstreamError(
                401, f"credential {cred.name!r} has no API key", credential_invalid=True
            )
        outgoing = dict(body)
        outgoing["model"] = upstream_model
        # The gateway's own cap (the client named none): OpenAI-wire providers cap themselves.
        outgoing.pop(MODEL_MAX_OUTPUT_KEY, None)
        return UpstreamRequest("POST", base + _PATHS[feature], headers, _encode(outgoing))

    def _streaming(self, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        if not stream:
            if body.get("stream"):
                body = dict(body)
                body["stream"] = False
            return body
        outgoing = dict(body)
        outgoing["stream"] = True
        options = body.get("stream_options")
        outgoing["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
        return outgoing

    def chat_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamRequest:
        return self._request(CHAT, cred, upstream_model, self._streaming(body, stream))

    def completions_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamRequest:
        return self._request(COMPLETIONS, cred, upstream_model, self._streaming(body, stream))

    def embeddings_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        return self._request(EMBEDDINGS, cred, upstream_model, body)

    def images_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        return self._request(IMAGES, cred, upstream_model, body)

    # --- responses --------------------------------------------------------------------------

    def _json(self, body: bytes) -> dict[str, Any]:
        # DeepSeek pads slow non-streamed answers with blank lines; JSON ignores the whitespace.
        try:
            payload = _decode(body)
        except msgspec.DecodeError:
            raise UpstreamError(
                502, f"{self.quirks.label} sent a malformed response", code="bad_upstream"
            ) from None
        if not isinstance(payload, dict):
            raise UpstreamError(
                502, f"{self.quirks.label} sent an unexpected response", code="bad_upstream"
            )
        if "error" in payload and "choices" not in payload and "data" not in payload:
            # OpenRouter can answer 200 with an error object.
            raise _error_from_payload(payload, 0, self.quirks, in_stream=True)
        return payload

    def _usage(self, payload: Mapping[str, Any]) -> TokenUsage:
        usage = payload.get("usage")
        return normalise_usage(usage, self.quirks) if isinstance(usage, dict) else TokenUsage()

    def chat_response(self, body: bytes) -> ChatResult:
        payload = self._json(body)
        choices = payload.get("choices")
        finish = None
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            finish = choices[0].get("finish_reason")
        finish_reason = finish if isinstance(finish, str) else None
        return ChatResult(payload, self._usage(payload), finish_reason)

    completions_response = chat_response

    def stream_translator(self, model: str) -> OpenAIStreamTranslator:
        return OpenAIStreamTranslator(model, self.quirks)

    def embeddings_response(
        self, body: bytes, request_body: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], TokenUsage]:
        payload = self._json(body)
        return payload, self._usage(payload)

    def images_response(
        self, body: bytes, request_body: dict[str, Any]
    ) -> tuple[dict[str, Any], TokenUsage]:
        payload = self._json(body)
        data = payload.get("data")
        count = len(data) if isinstance(data, list) else 0
        tokens = self._usage(payload)
        images = {image_price_key(request_body): count} if count else {}
        usage = msgspec.structs.replace(tokens, images=images)
        return payload, usage

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        try:
            payload = _decode(body) if body else None
        except msgspec.DecodeError:
            payload = {"message": body[:500].decode(errors="replace").strip()}
        error = _error_from_payload(payload, status, self.quirks)
        error.retry_after = _retry_after(headers)
        return error


# Typed as the protocol so that mypy checks the adapter against the binding interface.
PROVIDER_ADAPTERS: dict[str, CompletionsAdapter] = {
    kind: OpenAICompatibleAdapter(quirks) for kind, quirks in QUIRKS.items()
}
