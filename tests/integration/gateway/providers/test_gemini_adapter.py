"""The Gemini adapter end to end against the fake Gemini API over real HTTP."""

from __future__ import annotations

import base64
import json
import struct

import aiohttp
import pytest

from gateway.providers import ADAPTERS
from gateway.providers.base import Credential, UnsupportedFeature, UpstreamError
from tests.fakes.gemini_upstream import FakeGemini, embedding_for
from tests.fakes.upstream import Reply, ToolCall
from tests.integration.gateway.providers.harness import chat, chat_stream, credential, send

MODEL = "gemini-2.5-flash"
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def cred(fake_gemini: FakeGemini) -> Credential:
    return credential("gemini", fake_gemini.base_url, api_key="AIza-test")


async def test_plain_chat_maps_roles_system_and_generation_config(
    http: aiohttp.ClientSession, fake_gemini: FakeGemini, cred: Credential
) -> None:
    result = await chat(
        http,
        "gemini",
        cred,
        MODEL,
        {
            "model": "g",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": PNG}}]},
            ],
            "max_completion_tokens": 300,
            "top_p": 0.9,
            "stop": "END",
            "response_format": {"type": "json_object"},
            "reasoning_effort": "low",
        },
    )  # fmt: skip
    sent = fake_gemini.last
    assert sent.headers["x-goog-api-key"] == "AIza-test"
    assert sent.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert sent.json["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in sent.json["contents"]] == ["user", "model", "user"]
    assert sent.json["contents"][2]["parts"][1]["inlineData"]["mimeType"] == "image/png"
    assert sent.json["generationConfig"] == {
        "maxOutputTokens": 300,
        "topP": 0.9,
        "stopSequences": ["END"],
        "responseMimeType": "application/json",
        "thinkingConfig": {"thinkingBudget": 1024},
    }
    assert result.response["choices"][0]["message"]["content"] == "Hello! How can I help you today?"
    assert result.finish_reason == "stop"


async def test_function_call_round_trip_keeps_the_thought_signature(
    http: aiohttp.ClientSession, fake_gemini: FakeGemini, cred: Credential
) -> None:
    # gemini-3 models refuse a replayed function call without the signature they issued.
    model = "gemini-3-pro-preview"
    fake_gemini.enqueue(Reply(text="", tool_calls=[ToolCall("-", "get_weather", {"city": "Oslo"})]))
    question = {"role": "user", "content": "Weather in Oslo?"}
    first = await chat(
        http, "gemini", cred, model,
        {"model": "g", "messages": [question], "tools": [WEATHER_TOOL],
         "tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
    )  # fmt: skip
    assert fake_gemini.last.json["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    declaration = fake_gemini.last.json["tools"][0]["functionDeclarations"][0]
    assert declaration["parametersJsonSchema"]["properties"]["city"] == {"type": "string"}
    assert first.finish_reason == "tool_calls"
    message = first.response["choices"][0]["message"]
    call = message["tool_calls"][0]

    await chat(
        http, "gemini", cred, model,
        {"model": "g", "tools": [WEATHER_TOOL], "messages": [
            question, message, {"role": "tool", "tool_call_id": call["id"], "content": "-3C"}]},
    )  # fmt: skip
    contents = fake_gemini.last.json["contents"]
    assert contents[1]["parts"][0]["functionCall"] == {
        "name": "get_weather",
        "args": {"city": "Oslo"},
    }
    assert contents[1]["parts"][0]["thoughtSignature"] in fake_gemini.issued_signatures
    assert contents[2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "-3C"}}}],
    }


async def test_streaming_with_crlf_events_and_usage_from_the_last_piece(
    http: aiohttp.ClientSession, fake_gemini: FakeGemini, cred: Credential
) -> None:
    fake_gemini.enqueue(
        Reply(
            text="Il fait beau à Paris aujourd\u2019hui.",
            usage={"promptTokenCount": 120, "cachedContentTokenCount": 100,
                   "candidatesTokenCount": 9, "thoughtsTokenCount": 31},
        )
    )  # fmt: skip
    outcome = await chat_stream(
        http, "gemini", cred, MODEL, {"model": "g", "messages": [{"role": "user", "content": "?"}]}
    )
    assert fake_gemini.last.path.endswith(":streamGenerateContent")
    assert fake_gemini.last.query == {"alt": "sse"}
    assert outcome.text == "Il fait beau à Paris aujourd\u2019hui."
    assert outcome.finish_reasons == ["stop"]
    assert outcome.usage is not None
    assert outcome.usage.input_tokens == 20
    assert outcome.usage.cached_input_tokens == 100
    assert outcome.usage.output_tokens == 9
    assert outcome.usage.reasoning_tokens == 31


async def test_a_blocked_prompt_finishes_with_content_filter(
    http: aiohttp.ClientSession, fake_gemini: FakeGemini, cred: Credential
) -> None:
    fake_gemini.enqueue(Reply(blocked="SAFETY"), Reply(blocked="PROHIBITED_CONTENT"))
    body = {"model": "g", "messages": [{"role": "user", "content": "something bad"}]}
    result = await chat(http, "gemini", cred, MODEL, body)
    assert result.finish_reason == "content_filter"
    assert result.response["choices"][0]["message"]["content"] == ""
    outcome = await chat_stream(http, "gemini", cred, MODEL, body)
    assert outcome.finish_reasons == ["content_filter"]
    assert outcome.usage is not None
    assert outcome.usage.input_tokens == 20


async def test_safety_stop_of_a_candidate_is_content_filter(
    http: aiohttp.ClientSession, fake_gemini: FakeGemini, cred: Credential
) -> None:
    fake_gemini.enqueue(Reply(text="I was say", stop_reason="SAFETY"))
    result = await chat(
        http, "gemini", cred, MODEL, {"model": "g", "messages": [{"role": "user", "content": "x"}]}
    )
    assert result.finish_reason == "content_filter"


async def test_several_candidates_become_several_choices(
    http: aiohttp.ClientSession, fake_gemini: FakeGemini, cred: Credential
) -> None:
    fake_gemini.enqueue(Reply(text="One", candidates=2), Reply(text="Two words", candidates=2))
    body = {"model": "g", "messages": [{"role": "user", "content": "x"}], "n": 2}
    result = await chat(http, "gemini", cred, MODEL, body)
    assert fake_gemini.last.json["generationConfig"]["candidateCount"] == 2
    assert [c["index"] for c in result.response["choices"]] == [0, 1]
    outcome = await chat_stream(http, "gemini", cred, MODEL, body)
    by_choice: dict[int, str] = {}
    for chunk in outcome.chunks:
        for choice in chunk["choices"]:
            by_choice[choice["index"]] = by_choice.get(choice["index"], "") + (
                choice["delta"].get("content") or ""
            )
    assert by_choice == {0: "Two words", 1: "Two words"}


async def test_invalid_key_is_reported_as_a_credential_error(
    http: aiohttp.ClientSession, fake_gemini: FakeGemini
) -> None:
    bad = credential("gemini", fake_gemini.base_url, api_key="AIza-wrong")
    with pytest.raises(UpstreamError) as caught:
        await chat(
            http,
            "gemini",
            bad,
            MODEL,
            {"model": "g", "messages": [{"role": "user", "content": "x"}]},
        )
    assert caught.value.status == 401
    assert caught.value.credential_invalid


async def test_rate_limit_is_retryable_and_in_stream_errors_are_caught(
    http: aiohttp.ClientSession, fake_gemini: FakeGemini, cred: Credential
) -> None:
    fake_gemini.enqueue(Reply(error=(429, "RESOURCE_EXHAUSTED", "Quota exceeded")))
    with pytest.raises(UpstreamError) as caught:
        await chat(
            http,
            "gemini",
            cred,
            MODEL,
            {"model": "g", "messages": [{"role": "user", "content": "x"}]},
        )
    assert (caught.value.status, caught.value.retryable, caught.value.code) == (
        429,
        True,
        "RESOURCE_EXHAUSTED",
    )

    fake_gemini.enqueue(
        Reply(text="a b c", stream_error=("UNAVAILABLE", "The model is overloaded."))
    )
    outcome = await chat_stream(
        http, "gemini", cred, MODEL, {"model": "g", "messages": [{"role": "user", "content": "x"}]}
    )
    assert outcome.error is not None
    assert outcome.error.status == 503
    assert outcome.error.retryable


async def test_single_and_batch_embeddings(
    http: aiohttp.ClientSession, fake_gemini: FakeGemini, cred: Credential
) -> None:
    adapter = ADAPTERS["gemini"]
    model = "gemini-embedding-001"
    body = {"model": "emb", "input": "hello world", "dimensions": 4}
    status, _, raw = await send(http, adapter.embeddings_request(cred, model, body))
    assert status == 200
    assert fake_gemini.last.path.endswith(":embedContent")
    result, usage = adapter.embeddings_response(raw, request_body=body)  # type: ignore[call-arg]
    assert result["data"][0]["embedding"] == embedding_for("hello world", 4)
    assert usage.input_tokens == 3  # estimated: Gemini reported no count

    batch = {"model": "emb", "input": ["one", "two three"], "encoding_format": "base64"}
    fake_gemini.enqueue(Reply(embedding_usage=5))
    status, _, raw = await send(http, adapter.embeddings_request(cred, model, batch))
    assert status == 200
    assert fake_gemini.last.path.endswith(":batchEmbedContents")
    result, usage = adapter.embeddings_response(raw, request_body=batch)  # type: ignore[call-arg]
    decoded = base64.b64decode(result["data"][1]["embedding"])
    assert list(struct.unpack(f"<{len(decoded) // 4}f", decoded)) == embedding_for("two three", 8)
    assert usage.input_tokens == 5  # reported by the provider
    assert result["usage"] == {"prompt_tokens": 5, "total_tokens": 5}


def test_http_image_urls_and_strict_tools_are_refused_by_name() -> None:
    cred = credential("gemini", "http://unused", api_key="k")
    image = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(UnsupportedFeature, match="image URLs") as caught:
        ADAPTERS["gemini"].chat_request(
            cred, MODEL, {"messages": [{"role": "user", "content": [image]}]}, stream=False
        )
    assert "Google Gemini" in caught.value.message
    strict = {"type": "function", "function": {**WEATHER_TOOL["function"], "strict": True}}
    with pytest.raises(UnsupportedFeature, match="strict"):
        ADAPTERS["gemini"].chat_request(
            cred,
            MODEL,
            {"messages": [{"role": "user", "content": "x"}], "tools": [strict]},
            stream=False,
        )
    with pytest.raises(UnsupportedFeature, match="logprobs"):
        ADAPTERS["gemini"].chat_request(
            cred,
            MODEL,
            {"messages": [{"role": "user", "content": "x"}], "logprobs": True},
            stream=False,
        )


def test_tool_results_must_answer_a_known_call() -> None:
    cred = credential("gemini", "http://unused", api_key="k")
    body = {
        "messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "nope", "content": "1"},
        ]
    }
    with pytest.raises(Exception, match="tool_call_id") as caught:
        ADAPTERS["gemini"].chat_request(cred, MODEL, body, stream=False)
    assert getattr(caught.value, "status_code", None) == 400
    assert json.dumps(body)  # the body itself stays untouched
