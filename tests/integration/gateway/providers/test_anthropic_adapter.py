"""The Anthropic adapter end to end against the fake Messages API over real HTTP."""

from __future__ import annotations

import base64
import json

import aiohttp
import pytest

from gateway.providers import ADAPTERS
from gateway.providers.base import UnsupportedFeature, UpstreamError
from gateway.providers.chat_format import MODEL_MAX_OUTPUT_KEY
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.upstream import Reply, ToolCall
from tests.integration.gateway.providers.harness import chat, chat_stream, credential

MODEL = "claude-sonnet-4-5"
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def cred(fake_anthropic: FakeAnthropic):  # type: ignore[no-untyped-def]
    return credential("anthropic", fake_anthropic.base_url, api_key="sk-ant-test")


async def test_plain_chat_sends_system_and_max_tokens_and_reads_the_answer(
    http: aiohttp.ClientSession, fake_anthropic: FakeAnthropic, cred
) -> None:
    body = {
        "model": "my-claude",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
        ],
        MODEL_MAX_OUTPUT_KEY: 8192,
        "stop": ["\n\n"],
        "temperature": 0.2,
    }
    result = await chat(http, "anthropic", cred, MODEL, body)

    sent = fake_anthropic.last
    assert sent.headers["x-api-key"] == "sk-ant-test"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json["system"] == [{"type": "text", "text": "You are terse."}]
    assert sent.json["max_tokens"] == 8192  # the routed model's cap, as the gateway passed it
    assert sent.json["stop_sequences"] == ["\n\n"]
    assert MODEL_MAX_OUTPUT_KEY not in sent.json
    assert result.response["choices"][0]["message"]["content"] == "Hello! How can I help you today?"
    assert result.finish_reason == "stop"
    assert result.usage.input_tokens == 25
    assert result.usage.output_tokens == 12


async def test_tool_round_trip_over_two_turns(
    http: aiohttp.ClientSession, fake_anthropic: FakeAnthropic, cred
) -> None:
    fake_anthropic.enqueue(
        Reply(text="", tool_calls=[ToolCall("toolu_01A", "get_weather", {"city": "Paris"})])
    )
    first = await chat(
        http,
        "anthropic",
        cred,
        MODEL,
        {
            "model": "c",
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [WEATHER_TOOL],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
    )
    assert fake_anthropic.last.json["tool_choice"] == {
        "type": "any",
        "disable_parallel_tool_use": True,
    }
    assert fake_anthropic.last.json["tools"][0]["input_schema"]["properties"]["city"]
    message = first.response["choices"][0]["message"]
    assert first.finish_reason == "tool_calls"
    assert message["content"] is None
    call = message["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}

    second = await chat(
        http,
        "anthropic",
        cred,
        MODEL,
        {
            "model": "c",
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                message,
                {"role": "tool", "tool_call_id": call["id"], "content": "18C, sunny"},
                {"role": "user", "content": "And tomorrow?"},
            ],
            "tools": [WEATHER_TOOL],
        },
    )
    sent = fake_anthropic.last.json["messages"]
    # The tool result and the follow-up merge into one user turn, the result first.
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[1]["content"][0] == {
        "type": "tool_use",
        "id": "toolu_01A",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    assert sent[2]["content"][0]["type"] == "tool_result"
    assert sent[2]["content"][0]["tool_use_id"] == "toolu_01A"
    assert sent[2]["content"][1] == {"type": "text", "text": "And tomorrow?"}
    assert second.finish_reason == "stop"


async def test_images_go_as_base64_and_url_sources(
    http: aiohttp.ClientSession, fake_anthropic: FakeAnthropic, cred
) -> None:
    await chat(
        http,
        "anthropic",
        cred,
        MODEL,
        {
            "model": "c",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare these"},
                        {"type": "image_url", "image_url": {"url": PNG}},
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    ],
                }
            ],
        },
    )
    blocks = fake_anthropic.last.json["messages"][0]["content"]
    assert blocks[1]["source"]["type"] == "base64"
    assert blocks[1]["source"]["media_type"] == "image/png"
    assert blocks[2]["source"] == {"type": "url", "url": "https://example.com/cat.jpg"}


async def test_streaming_text_tools_and_usage(
    http: aiohttp.ClientSession, fake_anthropic: FakeAnthropic, cred
) -> None:
    fake_anthropic.enqueue(
        Reply(
            text="Checking the weather now.",
            tool_calls=[ToolCall("toolu_9", "get_weather", {"city": "Lyon", "unit": "celsius"})],
            usage={"input_tokens": 410, "output_tokens": 57},
        )
    )
    outcome = await chat_stream(
        http,
        "anthropic",
        cred,
        MODEL,
        {"model": "c", "messages": [{"role": "user", "content": "Lyon?"}], "tools": [WEATHER_TOOL]},
    )
    assert outcome.error is None
    assert outcome.text == "Checking the weather now."
    calls = outcome.tool_calls()
    assert calls[0]["id"] == "toolu_9"
    assert json.loads(calls[0]["arguments"]) == {"city": "Lyon", "unit": "celsius"}
    assert outcome.finish_reasons == ["tool_calls"]
    assert outcome.usage is not None
    assert (outcome.usage.input_tokens, outcome.usage.output_tokens) == (410, 57)
    usage_chunk = outcome.chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == 410


async def test_overloaded_529_is_retryable(
    http: aiohttp.ClientSession, fake_anthropic: FakeAnthropic, cred
) -> None:
    fake_anthropic.enqueue(Reply(error=(529, "overloaded_error", "Overloaded")))
    with pytest.raises(UpstreamError) as caught:
        await chat(
            http,
            "anthropic",
            cred,
            MODEL,
            {"model": "c", "messages": [{"role": "user", "content": "x"}]},
        )
    assert caught.value.status == 529
    assert caught.value.retryable
    assert caught.value.code == "overloaded_error"
    assert not caught.value.credential_invalid


async def test_a_wrong_key_marks_the_credential_invalid(
    http: aiohttp.ClientSession, fake_anthropic: FakeAnthropic
) -> None:
    bad = credential("anthropic", fake_anthropic.base_url, api_key="sk-ant-wrong")
    with pytest.raises(UpstreamError) as caught:
        await chat(
            http,
            "anthropic",
            bad,
            MODEL,
            {"model": "c", "messages": [{"role": "user", "content": "x"}]},
        )
    assert caught.value.status == 401
    assert caught.value.credential_invalid
    assert not caught.value.retryable


async def test_an_error_event_after_200_is_reported(
    http: aiohttp.ClientSession, fake_anthropic: FakeAnthropic, cred
) -> None:
    fake_anthropic.enqueue(
        Reply(text="partial answer here", stream_error=("overloaded_error", "Overloaded"))
    )
    outcome = await chat_stream(
        http,
        "anthropic",
        cred,
        MODEL,
        {"model": "c", "messages": [{"role": "user", "content": "x"}]},
    )
    assert outcome.status == 200
    assert outcome.error is not None
    assert outcome.error.status == 529
    assert outcome.error.retryable
    assert outcome.text == "partial "
    assert outcome.usage is None  # never reported: the gateway estimates


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"n": 2}, "`n`"),
        ({"logprobs": True}, "`logprobs`"),
        ({"response_format": {"type": "json_object"}}, "`response_format`"),
        ({"temperature": 1.5}, "temperature"),
        ({"seed": 7}, "`seed`"),
    ],
)
def test_features_anthropic_lacks_are_refused_by_name(extra: dict, named: str) -> None:
    body = {"model": "c", "messages": [{"role": "user", "content": "x"}], **extra}
    cred = credential("anthropic", "http://unused", api_key="k")
    with pytest.raises(UnsupportedFeature) as caught:
        ADAPTERS["anthropic"].chat_request(cred, MODEL, body, stream=False)
    assert named in caught.value.message
    assert "Anthropic" in caught.value.message
    assert caught.value.status_code == 400
    assert caught.value.code == "unsupported_feature"


def test_embeddings_and_audio_are_refused() -> None:
    cred = credential("anthropic", "http://unused", api_key="k")
    with pytest.raises(UnsupportedFeature, match="embeddings"):
        ADAPTERS["anthropic"].embeddings_request(cred, MODEL, {"input": "x"})
    audio = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}
    with pytest.raises(UnsupportedFeature, match="audio"):
        ADAPTERS["anthropic"].chat_request(
            cred, MODEL, {"messages": [{"role": "user", "content": [audio]}]}, stream=False
        )
