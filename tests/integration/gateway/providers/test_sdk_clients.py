"""The official `openai` and `anthropic` packages against the translation layer.

Each test puts a `MiniGateway` (what the gateway does with an adapter, nothing more) in front
of one fake provider and talks to it with the real client library, so what the adapters emit
is parsed by the code customers actually run: chat (plain, streaming, tools, images) and
embeddings through `openai`, Messages (plain, streaming, tools) through `anthropic`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import openai
import pytest
from aiohttp import web

from gateway.providers import anthropic_inbound
from gateway.providers.base import Credential
from tally.pricing import TokenUsage
from tests.fakes.upstream import FakeUpstream, Reply, ToolCall
from tests.integration.gateway.providers.harness import MiniGateway, charge_nano, credential

KINDS = ["anthropic", "gemini", "bedrock"]
UPSTREAM_MODELS = {
    "anthropic": "claude-sonnet-4-5",
    "gemini": "gemini-2.5-flash",
    "bedrock": "anthropic.claude-3-5-sonnet-20240620-v1:0",
}
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _cred(kind: str, fake: Any) -> Credential:
    if kind == "bedrock":
        return credential(
            kind,
            fake.base_url,
            api_key=None,
            access_key_id=fake.access_key_id,
            secret_access_key=fake.secret_access_key,
            options={"region": fake.region},
        )
    return credential(kind, fake.base_url, api_key=fake.api_key)


@pytest.fixture(params=KINDS)
async def route(
    request: pytest.FixtureRequest, provider_fakes: dict[str, FakeUpstream]
) -> AsyncIterator[tuple[FakeUpstream, MiniGateway]]:
    kind = request.param
    fake = provider_fakes[kind]
    gateway = MiniGateway(kind, _cred(kind, fake), UPSTREAM_MODELS[kind])
    await gateway.start()
    yield fake, gateway
    await gateway.stop()


def _openai(gateway: MiniGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{gateway.base_url}/v1", api_key="tally-key", max_retries=0)


def _anthropic(gateway: MiniGateway) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gateway.base_url, api_key="tally-key", max_retries=0)


# --- openai ---


async def test_openai_plain_chat(route: tuple[FakeUpstream, MiniGateway]) -> None:
    _fake, gateway = route
    async with _openai(gateway) as client:
        completion = await client.chat.completions.create(
            model="house-model",
            messages=[
                {"role": "system", "content": "Be kind."},
                {"role": "user", "content": "Hello"},
            ],
            max_tokens=100,
        )
    assert completion.choices[0].message.content == "Hello! How can I help you today?"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "house-model"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == gateway.usages[-1].total_input_tokens
    assert completion.usage.completion_tokens == gateway.usages[-1].total_output_tokens


async def test_openai_streaming_with_and_without_usage(
    route: tuple[FakeUpstream, MiniGateway],
) -> None:
    fake, gateway = route
    fake.enqueue(Reply(text="Streaming works fine."), Reply(text="Again."))
    async with _openai(gateway) as client:
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "go"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        bare = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "go"}], stream=True
        )
        bare_chunks = [chunk async for chunk in bare]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streaming works fine."
    assert [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ] == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == gateway.usages[0].total_output_tokens
    assert all(c.usage is None for c in bare_chunks)  # the client did not ask for it
    assert "".join(c.choices[0].delta.content or "" for c in bare_chunks if c.choices) == "Again."


async def test_openai_tools_round_trip_plain_and_streamed(
    route: tuple[FakeUpstream, MiniGateway],
) -> None:
    fake, gateway = route
    call = ToolCall("toolu_01", "get_weather", {"city": "Paris"})
    fake.enqueue(Reply(text="", tool_calls=[call]), Reply(text="It is sunny in Paris."))
    fake.enqueue(Reply(text="", tool_calls=[call]))
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    async with _openai(gateway) as client:
        first = await client.chat.completions.create(
            model="m", messages=[question], tools=[WEATHER]
        )
        message = first.choices[0].message
        assert first.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls is not None
        tool_call = message.tool_calls[0]
        assert tool_call.function.name == "get_weather"
        assert json.loads(tool_call.function.arguments) == {"city": "Paris"}

        second = await client.chat.completions.create(
            model="m",
            tools=[WEATHER],
            messages=[
                question,
                message.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": tool_call.id, "content": "sunny, 21C"},
            ],
        )
        assert second.choices[0].message.content == "It is sunny in Paris."

        stream = await client.chat.completions.create(
            model="m", messages=[question], tools=[WEATHER], stream=True
        )
        arguments, name = "", ""
        async for chunk in stream:
            for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                name += (delta_call.function and delta_call.function.name) or ""
                arguments += (delta_call.function and delta_call.function.arguments) or ""
    assert name == "get_weather"
    assert json.loads(arguments) == {"city": "Paris"}


async def test_openai_image_input(route: tuple[FakeUpstream, MiniGateway]) -> None:
    fake, gateway = route
    async with _openai(gateway) as client:
        completion = await client.chat.completions.create(
            model="m",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this image?"},
                        {"type": "image_url", "image_url": {"url": PNG}},
                    ],
                }
            ],
        )
    assert completion.choices[0].message.content
    assert "iVBORw0KGgpmYWtl" in fake.last.body.decode()  # the image bytes went upstream


async def test_openai_unsupported_feature_is_a_400_naming_it(
    route: tuple[FakeUpstream, MiniGateway],
) -> None:
    fake, gateway = route
    sent_before = len(fake.requests)
    async with _openai(gateway) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "x"}], logprobs=True
            )
    assert caught.value.code == "unsupported_feature"
    assert "logprobs" in caught.value.message
    assert len(fake.requests) == sent_before  # refused before any upstream call
    assert gateway.charges == []


@pytest.mark.parametrize("kind", ["gemini", "bedrock"])
async def test_openai_embeddings(kind: str, provider_fakes: dict[str, FakeUpstream]) -> None:
    fake = provider_fakes[kind]
    model = "gemini-embedding-001" if kind == "gemini" else "amazon.titan-embed-text-v2:0"
    gateway = await MiniGateway(kind, _cred(kind, fake), model).start()
    try:
        async with _openai(gateway) as client:
            # The openai package asks for base64 by default and decodes it itself.
            response = await client.embeddings.create(
                model="emb", input="a small test", dimensions=6
            )
    finally:
        await gateway.stop()
    assert len(response.data[0].embedding) == 6
    assert all(isinstance(v, float) for v in response.data[0].embedding)
    assert response.usage.prompt_tokens == gateway.usages[-1].input_tokens > 0


# --- anthropic ---


@pytest.fixture(params=[*KINDS])
async def messages_route(
    request: pytest.FixtureRequest, provider_fakes: dict[str, FakeUpstream]
) -> AsyncIterator[tuple[FakeUpstream, MiniGateway]]:
    kind = request.param
    gateway = MiniGateway(kind, _cred(kind, provider_fakes[kind]), UPSTREAM_MODELS[kind])
    await gateway.start()
    yield provider_fakes[kind], gateway
    await gateway.stop()


async def test_anthropic_messages_plain(messages_route: tuple[FakeUpstream, MiniGateway]) -> None:
    _fake, gateway = messages_route
    async with _anthropic(gateway) as client:
        message = await client.messages.create(
            model="claude-house",
            max_tokens=256,
            system="You are terse.",
            messages=[{"role": "user", "content": "Hello"}],
        )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello! How can I help you today?"
    assert message.stop_reason == "end_turn"
    usage = gateway.usages[-1]
    assert message.usage.input_tokens == usage.input_tokens
    assert message.usage.output_tokens == usage.total_output_tokens


async def test_anthropic_messages_stream(messages_route: tuple[FakeUpstream, MiniGateway]) -> None:
    fake, gateway = messages_route
    fake.enqueue(Reply(text="A streamed reply, word by word."))
    async with _anthropic(gateway) as client:
        async with client.messages.stream(
            model="claude-house", max_tokens=256, messages=[{"role": "user", "content": "go"}]
        ) as stream:
            text = "".join([piece async for piece in stream.text_stream])
            final = await stream.get_final_message()
    assert text == "A streamed reply, word by word."
    assert final.stop_reason == "end_turn"
    usage = gateway.usages[-1]
    assert final.usage.input_tokens == usage.input_tokens
    assert final.usage.output_tokens == usage.total_output_tokens


async def test_anthropic_tool_use_plain_and_streamed(
    messages_route: tuple[FakeUpstream, MiniGateway],
) -> None:
    fake, gateway = messages_route
    call = ToolCall("toolu_77", "get_weather", {"city": "Berlin"})
    fake.enqueue(
        Reply(text="Let me look.", tool_calls=[call]), Reply(text="Cold.", tool_calls=[call])
    )
    fake.enqueue(Reply(text="It is 4C in Berlin."))
    tools: Any = [
        {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": WEATHER["function"]["parameters"],
        }
    ]  # type: ignore[index]
    question: Any = {"role": "user", "content": "Berlin?"}
    async with _anthropic(gateway) as client:
        message = await client.messages.create(
            model="c", max_tokens=300, tools=tools, messages=[question]
        )
        async with client.messages.stream(
            model="c", max_tokens=300, tools=tools, messages=[question]
        ) as stream:
            streamed = await stream.get_final_message()
        tool_use = next(b for b in message.content if b.type == "tool_use")
        answer = await client.messages.create(
            model="c",
            max_tokens=300,
            tools=tools,
            messages=[
                question,
                {"role": "assistant", "content": message.content},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": tool_use.id, "content": "4C"}
                    ],
                },
            ],
        )
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "text"
    assert tool_use.name == "get_weather"
    assert tool_use.input == {"city": "Berlin"}
    streamed_use = next(b for b in streamed.content if b.type == "tool_use")
    assert streamed_use.input == {"city": "Berlin"}
    assert streamed.stop_reason == "tool_use"
    assert answer.content[0].type == "text"
    assert answer.content[0].text == "It is 4C in Berlin."


async def test_anthropic_native_route_relays_and_meters(
    provider_fakes: dict[str, FakeUpstream],
) -> None:
    fake = provider_fakes["anthropic"]
    plain = {"input_tokens": 10, "cache_read_input_tokens": 90, "output_tokens": 5}
    streamed = {"input_tokens": 11, "cache_creation_input_tokens": 7, "output_tokens": 6}
    fake.enqueue(Reply(text="native", usage=plain), Reply(text="native stream", usage=streamed))
    gateway = await MiniGateway("anthropic", _cred("anthropic", fake), "claude-opus-4").start()
    gateway.kind = "anthropic"
    try:
        async with _anthropic(gateway) as client:
            message = await client.messages.create(
                model="c",
                max_tokens=50,
                extra_body={"top_k": 5},
                messages=[{"role": "user", "content": "x"}],
            )
            async with client.messages.stream(
                model="c", max_tokens=50, messages=[{"role": "user", "content": "x"}]
            ) as stream:
                final = await stream.get_final_message()
    finally:
        await gateway.stop()
    assert fake.requests[0].json["top_k"] == 5  # native: nothing translated away
    assert fake.requests[0].json["model"] == "claude-opus-4"
    assert message.content[0].text == "native"  # type: ignore[union-attr]
    assert final.usage.cache_creation_input_tokens == 7
    assert gateway.usages == [
        TokenUsage(input_tokens=10, cached_input_tokens=90, output_tokens=5),
        TokenUsage(input_tokens=11, cache_write_tokens=7, output_tokens=6),
    ]
    assert gateway.charges == [charge_nano(u) for u in gateway.usages]


async def test_anthropic_native_only_parameter_refused_off_route(
    provider_fakes: dict[str, FakeUpstream],
) -> None:
    fake = provider_fakes["gemini"]
    gateway = await MiniGateway("gemini", _cred("gemini", fake), "gemini-2.5-flash").start()
    try:
        async with _anthropic(gateway) as client:
            with pytest.raises(anthropic.BadRequestError) as caught:
                await client.messages.create(
                    model="c",
                    max_tokens=50,
                    extra_body={"top_k": 5},
                    messages=[{"role": "user", "content": "x"}],
                )
    finally:
        await gateway.stop()
    assert "top_k" in str(caught.value)
    assert fake.requests == []


# --- anthropic_inbound around a canned internal stream ---


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [choice]}  # fmt: skip


def _call(index: int, arguments: str, name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if name:
        call.update(id=f"call_{index + 1}", type="function")
        call["function"]["name"] = name
    return {"tool_calls": [call]}


CANNED_CHUNKS: list[dict[str, Any]] = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Looking "}),
    _chunk({"content": "it up."}),
    _chunk(_call(0, "", "lookup")),
    _chunk(_call(0, '{"q": ')),
    _chunk(_call(0, '"tally"}')),
    _chunk(_call(1, '{"q": "billing"}', "lookup")),
    _chunk({}, "tool_calls"),
    {"id": "chatcmpl-abc", "object": "chat.completion.chunk", "created": 1, "model": "m",
     "choices": [], "usage": {"prompt_tokens": 150, "completion_tokens": 40, "total_tokens": 190,
                              "prompt_tokens_details": {"cached_tokens": 100}}},
]  # fmt: skip
CANNED_RESULT: dict[str, Any] = {
    "id": "chatcmpl-xyz", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "finish_reason": "length", "message": {
        "role": "assistant", "content": "Cut sho",
        "tool_calls": [{"id": "call_9", "type": "function",
                        "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}]}}],
}  # fmt: skip


@pytest.fixture
async def canned_server() -> AsyncIterator[str]:
    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        internal = anthropic_inbound.messages_to_chat_request(body)
        assert internal["messages"][0] == {"role": "system", "content": "sys"}
        if not internal.get("stream"):
            usage = TokenUsage(input_tokens=20, cached_input_tokens=5, output_tokens=7)
            message = anthropic_inbound.chat_result_to_message(
                CANNED_RESULT, usage, model=body["model"]
            )
            return web.json_response(message)
        out = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await out.prepare(request)
        encoder = anthropic_inbound.MessagesStreamEncoder(body["model"])
        for chunk in CANNED_CHUNKS:
            await out.write(encoder.feed(chunk))
        await out.write(encoder.finish())
        await out.write_eof()
        return out

    app = web.Application()
    app.add_routes([web.post("/v1/messages", messages)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def test_sdk_parses_an_encoded_internal_stream(canned_server: str) -> None:
    client = anthropic.AsyncAnthropic(base_url=canned_server, api_key="k", max_retries=0)
    async with client.messages.stream(
        model="claude-x", max_tokens=100, system="sys", messages=[{"role": "user", "content": "q"}]
    ) as stream:
        events = [event.type async for event in stream]
        final = await stream.get_final_message()
    await client.close()
    assert events[0] == "message_start"
    assert events[-1] == "message_stop"
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Looking it up."  # type: ignore[union-attr]
    assert final.content[1].input == {"q": "tally"}  # type: ignore[union-attr]
    assert final.content[2].input == {"q": "billing"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    # From the internal usage chunk: 150 prompt tokens of which 100 cached.
    assert final.usage.input_tokens == 50
    assert final.usage.cache_read_input_tokens == 100
    assert final.usage.output_tokens == 40
    assert final.model == "claude-x"


async def test_sdk_parses_a_translated_plain_result(canned_server: str) -> None:
    client = anthropic.AsyncAnthropic(base_url=canned_server, api_key="k", max_retries=0)
    message = await client.messages.create(
        model="claude-x", max_tokens=100, system="sys", messages=[{"role": "user", "content": "q"}]
    )
    await client.close()
    assert message.stop_reason == "max_tokens"
    assert message.content[0].text == "Cut sho"  # type: ignore[union-attr]
    assert message.content[1].input == {"q": "x"}  # type: ignore[union-attr]
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (20, 5)
    assert message.usage.output_tokens == 7
    assert message.id.startswith("msg_")
