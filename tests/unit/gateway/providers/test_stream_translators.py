"""Stream translators fed realistic upstream bytes cut at awkward boundaries.

Whatever the cut (whole, byte by byte, random pieces, inside a CRLF, inside a multi-byte
character, inside an event-stream prelude), the translated stream must say the same thing.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from gateway.providers import ADAPTERS
from gateway.providers.base import StreamTranslator
from gateway.providers.sse import SSEDecoder
from tally.pricing import TokenUsage
from tests.fakes.bedrock_upstream import event_frame, exception_frame

STREAMS_DIR = Path(__file__).parent / "streams"
# Anthropic's streaming example (docs: "Streaming Messages"), with a tool call added.
ANTHROPIC_STREAM = (STREAMS_DIR / "anthropic_messages.sse").read_bytes()
# Gemini's SSE: CRLF-separated `data:` pieces, usage on each, finishReason on the last.
GEMINI_STREAM = (STREAMS_DIR / "gemini_generate_content.sse").read_bytes()
TOOL_USE = {"toolUseId": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather"}
BEDROCK_USAGE = {
    "inputTokens": 472,
    "outputTokens": 89,
    "totalTokens": 1585,
    "cacheReadInputTokens": 1024,
}

BEDROCK_STREAM = b"".join(
    [
        event_frame("messageStart", {"role": "assistant"}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Café "}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "☕ time."}}),
        event_frame("contentBlockStop", {"contentBlockIndex": 0}),
        event_frame("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": TOOL_USE}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 1,
                                          "delta": {"toolUse": {"input": '{"location":'}}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 1,
                                          "delta": {"toolUse": {"input": ' "San Francisco'}}}),
        event_frame("contentBlockDelta", {"contentBlockIndex": 1,
                                          "delta": {"toolUse": {"input": ', CA"}'}}}),
        event_frame("contentBlockStop", {"contentBlockIndex": 1}),
        event_frame("messageStop", {"stopReason": "tool_use"}),
        event_frame("metadata", {"usage": BEDROCK_USAGE, "metrics": {"latencyMs": 1051}}),
    ]
)  # fmt: skip

STREAMS = {"anthropic": ANTHROPIC_STREAM, "gemini": GEMINI_STREAM, "bedrock": BEDROCK_STREAM}
EXPECTED_USAGE = {
    "anthropic": TokenUsage(input_tokens=472, cached_input_tokens=1024, output_tokens=89),
    "gemini": TokenUsage(input_tokens=9, output_tokens=20, reasoning_tokens=30),
    "bedrock": TokenUsage(input_tokens=472, cached_input_tokens=1024, output_tokens=89),
}


def _pieces(data: bytes, how: str) -> list[bytes]:
    if how == "whole":
        return [data]
    if how == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(how)
    pieces, start = [], 0
    while start < len(data):
        size = rng.randint(1, 40)
        pieces.append(data[start : start + size])
        start += size
    return pieces


def _run(translator: StreamTranslator, pieces: list[bytes]) -> list[dict[str, Any]]:
    chunks = []
    for piece in pieces:
        chunks.extend(translator.feed(piece))
    chunks.extend(translator.finish())
    return chunks


def _summary(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    text, finishes, usage_chunks = "", [], []
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        if not chunk["choices"]:
            usage_chunks.append(chunk["usage"])
            continue
        choice = chunk["choices"][0]
        text += choice["delta"].get("content") or ""
        for call in choice["delta"].get("tool_calls") or []:
            entry = calls.setdefault(call["index"], {"name": "", "arguments": ""})
            function = call.get("function") or {}
            entry["name"] += function.get("name") or ""
            entry["arguments"] += function.get("arguments") or ""
        if choice["finish_reason"]:
            finishes.append(choice["finish_reason"])
    return {"text": text, "calls": calls, "finishes": finishes, "usage_chunks": usage_chunks}


@pytest.mark.parametrize("how", ["whole", "bytes", "seed-1", "seed-2", "seed-3"])
@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_cut_anywhere_the_stream_says_the_same(kind: str, how: str) -> None:
    translator = ADAPTERS[kind].stream_translator("house-model")
    summary = _summary(_run(translator, _pieces(STREAMS[kind], how)))
    assert summary["text"] == "Café ☕ time."
    assert len(summary["calls"]) == 1
    assert summary["calls"][0]["name"] == "get_weather"
    assert json.loads(summary["calls"][0]["arguments"]) == {"location": "San Francisco, CA"}
    assert summary["finishes"] == ["tool_calls"]
    assert translator.error is None
    assert translator.usage == EXPECTED_USAGE[kind]
    assert len(summary["usage_chunks"]) == 1  # one closing usage chunk, as OpenAI sends
    assert summary["usage_chunks"][0]["prompt_tokens"] == EXPECTED_USAGE[kind].total_input_tokens


@pytest.mark.parametrize("kind", sorted(STREAMS))
def test_a_stream_cut_before_its_end_reports_no_usage(kind: str) -> None:
    data = STREAMS[kind]
    translator = ADAPTERS[kind].stream_translator("m")
    chunks = _run(translator, [data[: len(data) // 2]])
    assert _summary(chunks)["text"]  # some output already went to the client
    # No final count: the gateway estimates (and still charges) what was streamed.
    assert translator.usage is None


def test_a_corrupt_event_stream_frame_is_an_error() -> None:
    frame = bytearray(
        event_frame("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "hi"}})
    )
    frame[-6] ^= 0xFF  # flip a payload byte: the message CRC no longer matches
    translator = ADAPTERS["bedrock"].stream_translator("m")
    assert translator.feed(event_frame("messageStart", {"role": "assistant"}) + bytes(frame)) != []
    assert translator.error is not None
    assert translator.error.status == 502
    assert "corrupt" in translator.error.message


def test_a_bedrock_exception_frame_maps_to_its_status() -> None:
    translator = ADAPTERS["bedrock"].stream_translator("m")
    translator.feed(exception_frame("modelStreamErrorException", "The model stream failed."))
    assert translator.error is not None
    assert translator.error.status == 424
    assert translator.error.retryable
    assert translator.error.code == "ModelStreamErrorException"


def test_an_anthropic_error_event_and_a_restated_usage() -> None:
    translator = ADAPTERS["anthropic"].stream_translator("m")
    translator.feed(
        b"event: message_start\ndata: "
        b'{"type":"message_start","message":{"id":"msg_1","usage":'
        b'{"input_tokens":5,"output_tokens":1}}}\n\n'
        b"event: message_delta\ndata: "
        b'{"type":"message_delta","delta":{"stop_reason":"max_tokens"},'
        b'"usage":{"input_tokens":7,"output_tokens":30,"cache_read_input_tokens":null}}\n\n'
    )  # fmt: skip
    assert translator.usage == TokenUsage(input_tokens=7, output_tokens=30)
    translator.feed(
        b"event: error\ndata: "
        b'{"type":"error","error":{"type":"api_error","message":"Internal"}}\n\n'
    )
    assert translator.error is not None
    assert (translator.error.status, translator.error.retryable) == (500, True)


def test_sse_decoder_handles_every_line_ending_and_comments() -> None:
    stream = (
        b": keep-alive\r\nevent: a\r\ndata: one\r\ndata: two\r\n\r\n"
        b"data: three\rdata:four\r\r\ndata: five\n\n"
    )
    for how in ("whole", "bytes", "seed-9"):
        decoder = SSEDecoder()
        events = [e for piece in _pieces(stream, how) for e in decoder.feed(piece)]
        events += decoder.flush()
        assert [(e.event, e.data) for e in events] == [
            ("a", b"one\ntwo"),
            ("", b"three\nfour"),
            ("", b"five"),
        ]


def test_sse_decoder_flushes_a_last_event_without_blank_line() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"x": 1}') == []
    assert [e.data for e in decoder.flush()] == [b'{"x": 1}']
