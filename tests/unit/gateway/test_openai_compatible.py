"""The OpenAI-wire adapters: requests, usage normalisation per kind, streams, errors."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from gateway.providers import ADAPTERS
from gateway.providers.base import Credential, UnsupportedFeature, UpstreamError
from gateway.providers.openai_compatible import QUIRKS, normalise_usage
from gateway.providers.sse import SSEDecoder
from tally.pricing import TokenUsage

OPENAI_WIRE = ("openai", "deepseek", "openrouter", "xai", "ollama", "doubao", "poe")


def cred(kind: str, *, base_url: str | None = None, api_key: str | None = "sk-test") -> Credential:
    return Credential(uuid.uuid4(), kind, f"{kind}-1", base_url, api_key)


@pytest.mark.parametrize("kind", OPENAI_WIRE)
def test_every_openai_wire_kind_is_registered(kind: str) -> None:
    assert ADAPTERS[kind].kind == kind


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("openai", "https://api.openai.com/v1/chat/completions"),
        ("deepseek", "https://api.deepseek.com/chat/completions"),
        ("openrouter", "https://openrouter.ai/api/v1/chat/completions"),
        ("xai", "https://api.x.ai/v1/chat/completions"),
        ("ollama", "http://localhost:11434/v1/chat/completions"),
        ("doubao", "https://ark.cn-beijing.volces.com/api/v3/chat/completions"),
        ("poe", "https://api.poe.com/v1/chat/completions"),
    ],
)
def test_chat_requests_go_to_each_providers_default_path(kind: str, url: str) -> None:
    request = ADAPTERS[kind].chat_request(cred(kind), "up-model", {"model": "m"}, stream=False)
    assert request.url == url
    assert request.headers["authorization"] == "Bearer sk-test"


def test_a_credential_base_url_wins_and_trailing_slashes_do_not_double() -> None:
    request = ADAPTERS["doubao"].chat_request(
        cred("doubao", base_url="http://127.0.0.1:9/api/v3/"), "ep-1", {}, stream=False
    )
    assert request.url == "http://127.0.0.1:9/api/v3/chat/completions"


def test_a_local_ollama_needs_no_key_but_openai_does() -> None:
    request = ADAPTERS["ollama"].chat_request(
        cred("ollama", api_key=None), "llama3", {}, stream=False
    )
    assert "authorization" not in request.headers
    with pytest.raises(UpstreamError) as info:
        ADAPTERS["openai"].chat_request(cred("openai", api_key=None), "gpt", {}, stream=False)
    assert info.value.credential_invalid


def test_the_body_passes_through_except_model_and_usage_request() -> None:
    body = {
        "model": "public",
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "response_format": {"type": "json_object"},
        "stream_options": {"include_obfuscation": False},
        "vendor_field": 7,
    }
    request = ADAPTERS["openai"].chat_request(cred("openai"), "gpt-up", body, stream=True)
    sent = msgspec.json.decode(request.body)
    assert sent["model"] == "gpt-up"
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    for field in ("messages", "tools", "response_format", "vendor_field"):
        assert sent[field] == body[field]
    assert body["model"] == "public"  # the caller's dict is not mutated


@pytest.mark.parametrize(
    ("kind", "feature"),
    [
        ("deepseek", "embeddings"),
        ("poe", "images"),
        ("xai", "embeddings"),
        ("doubao", "completions"),
    ],
)
def test_features_a_provider_lacks_are_refused_clearly(kind: str, feature: str) -> None:
    adapter = ADAPTERS[kind]
    with pytest.raises(UnsupportedFeature) as info:
        if feature == "embeddings":
            adapter.embeddings_request(cred(kind), "m", {})
        elif feature == "images":
            adapter.images_request(cred(kind), "m", {})
        else:
            adapter.completions_request(cred(kind), "m", {}, stream=False)  # type: ignore[attr-defined]
    assert info.value.status_code == 400
    assert info.value.code == "unsupported_feature"
    assert QUIRKS[kind].label in info.value.message


def test_openai_usage_counts_cached_and_reasoning_once() -> None:
    usage = normalise_usage(
        {
            "prompt_tokens": 120,
            "completion_tokens": 40,
            "total_tokens": 160,
            "prompt_tokens_details": {"cached_tokens": 64},
            "completion_tokens_details": {"reasoning_tokens": 16},
        },
        QUIRKS["openai"],
    )
    assert usage == TokenUsage(
        input_tokens=56, cached_input_tokens=64, output_tokens=24, reasoning_tokens=16
    )


def test_deepseek_cache_hits_come_from_its_own_field() -> None:
    usage = normalise_usage(
        {
            "prompt_tokens": 100,
            "completion_tokens": 10,
            "prompt_cache_hit_tokens": 80,
            "prompt_cache_miss_tokens": 20,
        },
        QUIRKS["deepseek"],
    )
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (20, 80, 10)


def test_xai_reasoning_is_beside_completion_tokens() -> None:
    usage = normalise_usage(
        {
            "prompt_tokens": 30,
            "completion_tokens": 10,
            "total_tokens": 240,
            "completion_tokens_details": {"reasoning_tokens": 200},
        },
        QUIRKS["xai"],
    )
    assert (usage.output_tokens, usage.reasoning_tokens) == (10, 200)
    assert usage.total_output_tokens == 210


def test_openrouter_cache_writes_are_split_from_plain_input() -> None:
    usage = normalise_usage(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 600, "cache_write_tokens": 300},
            "cost": 0.0012,
        },
        QUIRKS["openrouter"],
    )
    assert (usage.input_tokens, usage.cached_input_tokens, usage.cache_write_tokens) == (
        100,
        600,
        300,
    )


def test_nonsense_usage_never_goes_negative() -> None:
    usage = normalise_usage(
        {
            "prompt_tokens": 5,
            "completion_tokens": None,
            "prompt_tokens_details": {"cached_tokens": 50},
            "completion_tokens_details": {"reasoning_tokens": 9},
        },
        QUIRKS["openai"],
    )
    assert usage == TokenUsage(cached_input_tokens=5)


def test_sse_decoder_handles_any_split_comments_and_crlf() -> None:
    raw = (
        b": keep-alive\r\n\r\n"
        b'data: {"a":1}\r\n\r\n'
        b": OPENROUTER PROCESSING\n\n"
        b"event: ping\ndata: {}\n\n"
        b"data: [DONE]\n\n"
    )
    for split in range(1, len(raw)):
        decoder = SSEDecoder()
        events = decoder.feed(raw[:split]) + decoder.feed(raw[split:]) + decoder.flush()
        assert [(e.event, e.data) for e in events] == [
            ("", b'{"a":1}'),
            ("ping", b"{}"),
            ("", b"[DONE]"),
        ]


def _sse(*payloads: object) -> bytes:
    return b"".join(
        b"data: " + (p if isinstance(p, bytes) else msgspec.json.encode(p)) + b"\n\n"
        for p in payloads
    )


def test_stream_translator_reports_usage_and_rewrites_the_model() -> None:
    translator = ADAPTERS["openai"].stream_translator("public-model")
    raw = _sse(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "gpt-up",
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
        },
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "gpt-up",
            "choices": [],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        },
        b"[DONE]",
    )
    chunks = [c for i in range(0, len(raw), 7) for c in translator.feed(raw[i : i + 7])]
    chunks += translator.finish()
    assert [c["model"] for c in chunks] == ["public-model", "public-model"]
    assert translator.usage == TokenUsage(input_tokens=3, output_tokens=1)
    assert translator.error is None


def test_an_in_stream_error_event_is_reported_not_passed_on() -> None:
    translator = ADAPTERS["openrouter"].stream_translator("m")
    chunks = translator.feed(
        b": OPENROUTER PROCESSING\n\n"
        + _sse({"error": {"code": 502, "message": "provider went away"}})
    )
    assert chunks == []
    assert translator.error is not None
    assert (translator.error.status, translator.error.message) == (502, "provider went away")
    assert translator.error.retryable


def test_errors_keep_status_message_code_and_retry_after() -> None:
    adapter = ADAPTERS["openai"]
    body = msgspec.json.encode(
        {"error": {"message": "slow down", "type": "requests", "param": None, "code": "rate_limit"}}
    )
    error = adapter.error(429, {"retry-after": "7"}, body)
    assert (error.status, error.message, error.code, error.retry_after) == (
        429,
        "slow down",
        "rate_limit",
        7.0,
    )
    assert error.retryable and not error.credential_invalid
    bad_request = adapter.error(
        400, {}, b'{"error":{"message":"bad","type":"invalid_request_error"}}'
    )
    assert not bad_request.retryable
    assert adapter.error(401, {}, b"not json").credential_invalid


def test_an_exhausted_provider_account_fails_over_instead_of_blaming_the_client() -> None:
    error = ADAPTERS["deepseek"].error(402, {}, b'{"error":{"message":"Insufficient Balance"}}')
    assert error.retryable
    assert not ADAPTERS["openai"].error(402, {}, b"{}").retryable


def test_images_usage_is_counted_by_size_and_quality() -> None:
    body = msgspec.json.encode({"created": 1, "data": [{"url": "a"}, {"url": "b"}]})
    _, usage = ADAPTERS["openai"].images_response(body, {"size": "1024x1792", "quality": "hd"})
    assert usage.images == {"1024x1792/hd": 2}
    _, usage = ADAPTERS["openai"].images_response(body, {})
    assert usage.images == {"1024x1024": 2}
