"""Inbound Anthropic Messages requests to the internal format, and internal results back."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.providers.anthropic_inbound import (
    MessagesStreamEncoder,
    chat_result_to_message,
    error_body,
    messages_to_chat_request,
)
from gateway.providers.base import UnsupportedFeature
from tally.errors import InvalidRequest
from tally.pricing import TokenUsage


def _request(**extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-house",
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": "Hello"}],
        **extra,
    }


def test_system_multi_turn_tools_and_results_translate() -> None:
    internal = messages_to_chat_request(
        _request(
            system=[{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
            stop_sequences=["END"],
            temperature=0.3,
            metadata={"user_id": "u-42"},
            tools=[{"name": "lookup", "description": "Search", "input_schema": {"type": "object"}}],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            messages=[
                {"role": "user", "content": "Find tally"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Searching."},
                        {"type": "tool_use", "id": "toolu_1", "name": "lookup",
                         "input": {"q": "tally"}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "not found",
                         "is_error": True},
                        {"type": "text", "text": "Try again"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": "iVBORw0K"}},
                    ],
                },
            ],
        )
    )  # fmt: skip
    assert internal["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Find tally"},
        {
            "role": "assistant",
            "content": "Searching.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": json.dumps({"q": "tally"})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Error:\nnot found"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Try again"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            ],
        },
    ]
    assert internal["tools"][0]["function"]["name"] == "lookup"
    assert internal["tool_choice"] == "required"
    assert internal["parallel_tool_calls"] is False
    assert internal["stop"] == ["END"]
    assert internal["max_tokens"] == 1024
    assert internal["user"] == "u-42"
    assert "stream" not in internal


def test_streaming_requests_ask_for_usage() -> None:
    internal = messages_to_chat_request(_request(stream=True))
    assert internal["stream"] is True
    assert internal["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    "extra",
    [
        {"top_k": 5},
        {"thinking": {"type": "enabled", "budget_tokens": 2048}},
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {"mcp_servers": [{"type": "url", "url": "https://x", "name": "x"}]},
        {"some_new_field": 1},
    ],
)
def test_native_only_features_are_refused_off_the_anthropic_route(extra: dict[str, Any]) -> None:
    with pytest.raises(
        UnsupportedFeature, match="only supported when the model routes to Anthropic"
    ):
        messages_to_chat_request(_request(**extra))


def test_disabled_thinking_is_no_request_at_all() -> None:
    assert messages_to_chat_request(_request(thinking={"type": "disabled"}))["messages"]


@pytest.mark.parametrize(
    "body",
    [
        {"model": "c", "messages": [{"role": "user", "content": "x"}]},  # no max_tokens
        _request(messages=[]),
        _request(messages=[{"role": "system", "content": "x"}]),
    ],
)
def test_malformed_requests_are_400(body: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest):
        messages_to_chat_request(body)


def test_result_translation_maps_stop_reasons_and_usage() -> None:
    response = {
        "id": "chatcmpl-123",
        "choices": [
            {
                "index": 0,
                "finish_reason": "content_filter",
                "message": {"role": "assistant", "content": "I can't", "tool_calls": None},
            }
        ],
    }
    usage = TokenUsage(
        input_tokens=10,
        cached_input_tokens=20,
        cache_write_tokens=30,
        output_tokens=4,
        reasoning_tokens=6,
    )
    message = chat_result_to_message(response, usage, model="claude-house")
    assert message["id"] == "msg_123"
    assert message["stop_reason"] == "refusal"
    assert message["content"] == [{"type": "text", "text": "I can't"}]
    assert message["usage"] == {
        "input_tokens": 10,
        "cache_read_input_tokens": 20,
        "cache_creation_input_tokens": 30,
        "output_tokens": 10,
    }


def test_encoder_emits_the_anthropic_event_sequence() -> None:
    encoder = MessagesStreamEncoder("claude-house")
    chunk = {
        "id": "chatcmpl-1",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
    stop = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    raw = (
        encoder.feed(chunk)
        + encoder.feed(stop)
        + encoder.finish(TokenUsage(input_tokens=3, output_tokens=1))
    )
    events = [
        block.split("\n")[0].removeprefix("event: ") for block in raw.decode().strip().split("\n\n")
    ]
    assert events == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    delta = json.loads(raw.decode().strip().split("\n\n")[4].split("data: ", 1)[1])
    assert delta["delta"]["stop_reason"] == "max_tokens"
    assert delta["usage"]["input_tokens"] == 3
    assert encoder.feed(chunk) == b""  # closed


def test_error_body_uses_anthropic_types() -> None:
    assert error_body(529, "busy")["error"]["type"] == "overloaded_error"
    assert error_body(402, "no credits", "insufficient_credits")["error"]["type"] == "billing_error"
    assert error_body(400, "bad", "invalid_request_error") == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
    }
