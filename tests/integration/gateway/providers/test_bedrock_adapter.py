"""The Bedrock adapter end to end against the fake Bedrock runtime over real HTTP: SigV4
signatures verified by the fake, ConverseStream's binary event-stream frames decoded."""

from __future__ import annotations

import base64
import json
import re

import aiohttp
import pytest

from gateway.providers import ADAPTERS
from gateway.providers.base import Credential, UnsupportedFeature, UpstreamError
from tests.fakes.bedrock_upstream import FakeBedrock
from tests.fakes.upstream import Reply, ToolCall
from tests.integration.gateway.providers.harness import chat, chat_stream, credential, send

# A real model id: its ':' must survive URL encoding and signing unchanged.
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
SIGV4 = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=AKIAFAKEEXAMPLE/\d{8}/eu-west-3/bedrock/aws4_request, "
    r"SignedHeaders=[a-z0-9;-]*host[a-z0-9;-]*, Signature=[0-9a-f]{64}$"
)


@pytest.fixture
def cred(fake_bedrock: FakeBedrock) -> Credential:
    return credential(
        "bedrock",
        fake_bedrock.base_url,
        api_key=None,
        access_key_id=fake_bedrock.access_key_id,
        secret_access_key=fake_bedrock.secret_access_key,
        options={"region": "eu-west-3"},
    )


async def test_signed_converse_with_system_image_and_inference_config(
    http: aiohttp.ClientSession, fake_bedrock: FakeBedrock, cred: Credential
) -> None:
    result = await chat(
        http, "bedrock", cred, MODEL,
        {"model": "b", "max_tokens": 256, "temperature": 0.5, "stop": ["###"], "messages": [
            {"role": "system", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "text", "text": "Describe"},
                                         {"type": "image_url", "image_url": {"url": PNG}}]}]},
    )  # fmt: skip
    sent = fake_bedrock.last
    assert SIGV4.match(sent.headers["Authorization"])
    assert re.fullmatch(r"\d{8}T\d{6}Z", sent.headers["X-Amz-Date"])
    assert sent.path == "/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse"
    assert sent.json["system"] == [{"text": "Answer in French."}]
    assert sent.json["inferenceConfig"] == {
        "maxTokens": 256,
        "temperature": 0.5,
        "stopSequences": ["###"],
    }
    image = sent.json["messages"][0]["content"][1]["image"]
    assert image["format"] == "png"
    assert base64.b64decode(image["source"]["bytes"]).startswith(b"\x89PNG")
    assert result.response["choices"][0]["message"]["content"] == "Hello! How can I help you today?"
    assert result.usage.input_tokens == 30


async def test_an_arn_model_id_is_signed_as_sent(
    http: aiohttp.ClientSession, fake_bedrock: FakeBedrock, cred: Credential
) -> None:
    arn = (
        "arn:aws:bedrock:eu-west-3:123456789012:inference-profile/eu.anthropic.claude-3-haiku-v1:0"
    )
    result = await chat(
        http, "bedrock", cred, arn, {"model": "b", "messages": [{"role": "user", "content": "x"}]}
    )
    assert result.finish_reason == "stop"
    assert "%2F" in fake_bedrock.last.path  # the '/' of the ARN stays one path segment


async def test_a_wrong_secret_fails_the_signature_check(
    http: aiohttp.ClientSession, fake_bedrock: FakeBedrock
) -> None:
    bad = credential(
        "bedrock", fake_bedrock.base_url, api_key=None, access_key_id=fake_bedrock.access_key_id,
        secret_access_key="not-the-secret", options={"region": "eu-west-3"},
    )  # fmt: skip
    with pytest.raises(UpstreamError) as caught:
        await chat(
            http,
            "bedrock",
            bad,
            MODEL,
            {"model": "b", "messages": [{"role": "user", "content": "x"}]},
        )
    assert caught.value.status == 403
    assert caught.value.code == "InvalidSignatureException"
    assert caught.value.credential_invalid


async def test_tool_round_trip(
    http: aiohttp.ClientSession, fake_bedrock: FakeBedrock, cred: Credential
) -> None:
    fake_bedrock.enqueue(
        Reply(text="", tool_calls=[ToolCall("tooluse_Ab1", "get_weather", {"city": "Rome"})])
    )
    question = {"role": "user", "content": "Rome?"}
    first = await chat(
        http, "bedrock", cred, MODEL,
        {"model": "b", "messages": [question], "tools": [WEATHER_TOOL], "tool_choice": "auto"},
    )  # fmt: skip
    config = fake_bedrock.last.json["toolConfig"]
    assert config["tools"][0]["toolSpec"]["inputSchema"]["json"]["properties"]["city"]
    assert config["toolChoice"] == {"auto": {}}
    assert first.finish_reason == "tool_calls"
    message = first.response["choices"][0]["message"]
    await chat(
        http, "bedrock", cred, MODEL,
        {"model": "b", "tools": [WEATHER_TOOL], "messages": [
            question, message,
            {"role": "tool", "tool_call_id": "tooluse_Ab1", "content": "24C"}]},
    )  # fmt: skip
    sent = fake_bedrock.last.json["messages"]
    assert sent[1]["content"] == [
        {"toolUse": {"toolUseId": "tooluse_Ab1", "name": "get_weather", "input": {"city": "Rome"}}}
    ]
    assert sent[2]["content"] == [
        {
            "toolResult": {
                "toolUseId": "tooluse_Ab1",
                "content": [{"text": "24C"}],
                "status": "success",
            }
        }
    ]


async def test_converse_stream_frames_decode_into_chunks(
    http: aiohttp.ClientSession, fake_bedrock: FakeBedrock, cred: Credential
) -> None:
    fake_bedrock.enqueue(
        Reply(
            text="Sure, checking.",
            tool_calls=[ToolCall("tooluse_X", "get_weather", {"city": "Nice", "days": 3})],
            usage={"inputTokens": 88, "outputTokens": 21, "cacheReadInputTokens": 640,
                   "cacheWriteInputTokens": 12},
        )
    )  # fmt: skip
    outcome = await chat_stream(
        http, "bedrock", cred, MODEL,
        {"model": "b", "messages": [{"role": "user", "content": "Nice?"}], "tools": [WEATHER_TOOL]},
    )  # fmt: skip
    assert fake_bedrock.last.path.endswith("/converse-stream")
    assert SIGV4.match(fake_bedrock.last.headers["Authorization"])
    assert outcome.error is None
    assert outcome.text == "Sure, checking."
    call = outcome.tool_calls()[0]
    assert (call["id"], call["name"]) == ("tooluse_X", "get_weather")
    assert json.loads(call["arguments"]) == {"city": "Nice", "days": 3}
    assert outcome.finish_reasons == ["tool_calls"]
    assert outcome.usage is not None
    assert (
        outcome.usage.input_tokens,
        outcome.usage.cached_input_tokens,
        outcome.usage.cache_write_tokens,
        outcome.usage.output_tokens,
    ) == (88, 640, 12, 21)


async def test_an_exception_frame_mid_stream_is_a_retryable_error(
    http: aiohttp.ClientSession, fake_bedrock: FakeBedrock, cred: Credential
) -> None:
    fake_bedrock.enqueue(
        Reply(text="one two three", stream_error=("throttlingException", "Too many tokens"))
    )
    outcome = await chat_stream(
        http, "bedrock", cred, MODEL, {"model": "b", "messages": [{"role": "user", "content": "x"}]}
    )
    assert outcome.text == "one "
    assert outcome.error is not None
    assert (outcome.error.status, outcome.error.code, outcome.error.retryable) == (
        429, "ThrottlingException", True,
    )  # fmt: skip
    assert outcome.usage is None


async def test_http_errors_take_their_type_from_the_header(
    http: aiohttp.ClientSession, fake_bedrock: FakeBedrock, cred: Credential
) -> None:
    fake_bedrock.enqueue(Reply(error=(400, "ValidationException", "The model returned an error.")))
    with pytest.raises(UpstreamError) as caught:
        await chat(
            http,
            "bedrock",
            cred,
            MODEL,
            {"model": "b", "messages": [{"role": "user", "content": "x"}]},
        )
    assert (caught.value.status, caught.value.code, caught.value.retryable) == (
        400,
        "ValidationException",
        False,
    )
    fake_bedrock.enqueue(Reply(error=(503, "ServiceUnavailableException", "try later")))
    with pytest.raises(UpstreamError) as caught:
        await chat(
            http,
            "bedrock",
            cred,
            MODEL,
            {"model": "b", "messages": [{"role": "user", "content": "x"}]},
        )
    assert caught.value.retryable


async def test_titan_embeddings_through_invoke(
    http: aiohttp.ClientSession, fake_bedrock: FakeBedrock, cred: Credential
) -> None:
    adapter = ADAPTERS["bedrock"]
    body = {"model": "emb", "input": "three little words", "dimensions": 4}
    status, _, raw = await send(
        http, adapter.embeddings_request(cred, "amazon.titan-embed-text-v2:0", body)
    )
    assert status == 200
    assert fake_bedrock.last.path == "/model/amazon.titan-embed-text-v2:0/invoke"
    result, usage = adapter.embeddings_response(raw, request_body=body)  # type: ignore[call-arg]
    assert len(result["data"][0]["embedding"]) == 4
    assert usage.input_tokens == 3
    with pytest.raises(UnsupportedFeature, match="several embedding inputs"):
        adapter.embeddings_request(cred, "amazon.titan-embed-text-v2:0", {"input": ["a", "b"]})


def test_http_images_and_tool_choice_none_with_tool_history_are_refused() -> None:
    cred = credential("bedrock", "http://unused", api_key="bedrock-api-key")
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(UnsupportedFeature, match="image URLs") as caught:
        ADAPTERS["bedrock"].chat_request(
            cred, MODEL, {"messages": [{"role": "user", "content": [image]}]}, stream=False
        )
    assert "Amazon Bedrock" in caught.value.message
    call = {"id": "t1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    history = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "t1", "content": "ok"},
    ]
    with pytest.raises(UnsupportedFeature, match="tool_choice"):
        ADAPTERS["bedrock"].chat_request(
            cred,
            MODEL,
            {"messages": history, "tools": [WEATHER_TOOL], "tool_choice": "none"},
            stream=False,
        )


def test_an_api_key_credential_uses_bearer_auth() -> None:
    cred = credential("bedrock", None, api_key="ABSK-example", options={"region": "ap-south-1"})  # type: ignore[arg-type]
    request = ADAPTERS["bedrock"].chat_request(
        cred, MODEL, {"messages": [{"role": "user", "content": "x"}]}, stream=False
    )
    assert (
        request.url
        == "https://bedrock-runtime.ap-south-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1:0/converse"
    )
    assert request.headers["authorization"] == "Bearer ABSK-example"
