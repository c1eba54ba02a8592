"""A fake Anthropic Messages API (`POST /v1/messages`), plain and streaming.

Built from Anthropic's published examples: the Message object, the named SSE events of a
streamed message (message_start, ping, content_block_start/delta/stop, message_delta with
cumulative usage, message_stop, error) and the error shape
`{"type":"error","error":{"type","message"},"request_id"}`. Requests are checked as the API
does: `x-api-key` and `anthropic-version` headers, required `max_tokens`, user/assistant roles
only, no empty text blocks, tool results answering the previous turn's tool uses and opening
their user turn, temperature within 0-1, and no unknown top-level fields.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from typing import Any

from aiohttp import web

from tests.fakes.upstream import FakeUpstream, ProviderError, Reply, split_json, split_words

ALLOWED_FIELDS = {
    "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature",
    "top_p", "top_k", "tools", "tool_choice", "metadata", "thinking", "service_tier",
}  # fmt: skip
IMAGE_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class FakeAnthropic(FakeUpstream):
    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self.messages)]

    async def messages(self, request: web.Request) -> web.StreamResponse:
        try:
            if request.headers.get("x-api-key") != self.api_key:
                raise ProviderError(401, "authentication_error", "invalid x-api-key")
            if not request.headers.get("anthropic-version"):
                raise ProviderError(
                    400, "invalid_request_error", "anthropic-version: header is required"
                )
            try:
                body = json.loads(await request.read())
            except ValueError:
                raise ProviderError(400, "invalid_request_error", "invalid JSON body") from None
            validate(body)
            reply = self.next_reply()
            if reply.error is not None:
                raise ProviderError(*reply.error)
        except ProviderError as exc:
            return web.json_response(
                {
                    "type": "error",
                    "error": {"type": exc.error_type, "message": exc.message},
                    "request_id": f"req_{uuid.uuid4().hex[:24]}",
                },
                status=exc.status,
            )
        message = build_message(body, reply)
        if body.get("stream"):
            return await self._stream(request, message, reply)
        return web.json_response(message)

    async def _stream(
        self, request: web.Request, message: dict[str, Any], reply: Reply
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        usage = message["usage"]
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        await response.write(_sse("message_start", {"type": "message_start", "message": start}))
        await response.write(_sse("ping", {"type": "ping"}))
        for index, block in enumerate(message["content"]):
            for event in _block_events(index, block):
                await response.write(event)
                if reply.stream_error is not None and b"text_delta" in event:
                    error_type, text = reply.stream_error
                    await response.write(
                        _sse(
                            "error",
                            {"type": "error", "error": {"type": error_type, "message": text}},
                        )
                    )
                    await response.write_eof()
                    return response
        await response.write(
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                    # Cumulative: the final output count (and its thinking breakdown).
                    "usage": {
                        k: v
                        for k, v in usage.items()
                        if k in ("output_tokens", "output_tokens_details")
                    },
                },
            )
        )
        await response.write(_sse("message_stop", {"type": "message_stop"}))
        await response.write_eof()
        return response


def _start(index: int, block: dict[str, Any]) -> bytes:
    event = {"type": "content_block_start", "index": index, "content_block": block}
    return _sse("content_block_start", event)


def _delta(index: int, delta: dict[str, Any]) -> bytes:
    return _sse(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    kind = block["type"]
    if kind == "text":
        events = [_start(index, {"type": "text", "text": ""})]
        events += [
            _delta(index, {"type": "text_delta", "text": p}) for p in split_words(block["text"])
        ]
    elif kind == "thinking":
        events = [
            _start(index, {"type": "thinking", "thinking": "", "signature": ""}),
            _delta(index, {"type": "thinking_delta", "thinking": block["thinking"]}),
            _delta(index, {"type": "signature_delta", "signature": block["signature"]}),
        ]
    else:
        events = [
            _start(
                index, {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            )
        ]
        # The first fragment is empty, as in Anthropic's own streams.
        for fragment in ["", *split_json(block["input"])]:
            events.append(_delta(index, {"type": "input_json_delta", "partial_json": fragment}))
    events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def build_message(body: dict[str, Any], reply: Reply) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if reply.thinking:
        content.append({"type": "thinking", "thinking": reply.thinking, "signature": "EqQBCgIYAh"})
    if reply.text:
        content.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        content.append(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
        )
    usage = {
        "input_tokens": 25,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 12,
        "service_tier": "standard",
    }
    usage.update(reply.usage)
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": content,
        "stop_reason": reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn"),
        "stop_sequence": None,
        "usage": usage,
    }


def _bad(message: str) -> ProviderError:
    return ProviderError(400, "invalid_request_error", message)


def validate(body: Any) -> None:
    """The checks Anthropic makes before generating anything."""
    if not isinstance(body, dict):
        raise _bad("body must be an object")
    for key in body:
        if key not in ALLOWED_FIELDS:
            raise _bad(f"{key}: Extra inputs are not permitted")
    if not isinstance(body.get("model"), str):
        raise _bad("model: Field required")
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        raise _bad("max_tokens: Field required")
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        raise _bad("temperature: Input should be less than or equal to 1")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        for block in system:
            if block.get("type") != "text" or not block.get("text"):
                raise _bad("system: text content blocks must be non-empty")
    tool_names = set()
    for tool in body.get("tools") or []:
        if not TOOL_NAME.match(str(tool.get("name"))):
            raise _bad("tools.0.custom.name: String should match pattern")
        if (tool.get("input_schema") or {}).get("type") != "object":
            raise _bad("tools.0.custom.input_schema.type: Input should be 'object'")
        tool_names.add(tool["name"])
    choice = body.get("tool_choice")
    if choice is not None and choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _bad("tool_choice: unknown type")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: at least one message is required")
    previous_tool_uses: set[str] = set()
    for i, message in enumerate(messages):
        if message.get("role") not in ("user", "assistant"):
            raise _bad(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = message.get("content")
        if isinstance(content, str):
            if not content:
                raise _bad(f"messages.{i}: text content blocks must be non-empty")
            previous_tool_uses = set()
            continue
        if not content:
            raise _bad(f"messages.{i}: all messages must have non-empty content")
        tool_uses = set()
        seen_other = False
        for block in content:
            kind = block.get("type")
            if kind == "text":
                if not block.get("text"):
                    raise _bad(f"messages.{i}: text content blocks must be non-empty")
                seen_other = True
            elif kind == "image":
                _check_image(block.get("source") or {}, i)
                seen_other = True
            elif kind == "document":
                seen_other = True
            elif kind == "tool_use":
                if message["role"] != "assistant":
                    raise _bad(f"messages.{i}: tool_use blocks only in assistant messages")
                if not isinstance(block.get("input"), dict):
                    raise _bad(f"messages.{i}: tool_use.input must be an object")
                tool_uses.add(block["id"])
            elif kind == "tool_result":
                if message["role"] != "user":
                    raise _bad(f"messages.{i}: tool_result blocks only in user messages")
                if seen_other:
                    raise _bad(f"messages.{i}: tool_result blocks must come first")
                if block.get("tool_use_id") not in previous_tool_uses:
                    raise _bad(
                        f"messages.{i}: unexpected `tool_use_id` found in `tool_result` blocks"
                    )
            else:
                raise _bad(f"messages.{i}: unknown content block type {kind}")
        previous_tool_uses = tool_uses


def _check_image(source: dict[str, Any], i: int) -> None:
    if source.get("type") == "url":
        if not str(source.get("url")).startswith(("http://", "https://")):
            raise _bad(f"messages.{i}: image url must be http(s)")
        return
    if source.get("type") != "base64" or source.get("media_type") not in IMAGE_TYPES:
        raise _bad(f"messages.{i}: image source media_type must be one of {sorted(IMAGE_TYPES)}")
    try:
        base64.b64decode(source.get("data") or "", validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"messages.{i}: image data is not valid base64") from None
