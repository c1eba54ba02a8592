"""Anthropic Messages API adapter: OpenAI chat completions <-> `POST /v1/messages`.

Quirks handled here: `max_tokens` is required upstream; the system prompt is a top-level field;
tool calls are `tool_use` blocks in assistant content and their results `tool_result` blocks in
a *user* message; consecutive same-role turns are merged; `input_tokens` excludes cache writes
and cache reads, which are reported (and priced) separately.

Besides the ProviderAdapter methods, the adapter offers native pass-through for the inbound
Anthropic API (`messages_request`, `messages_usage`, `MessagesStreamMeter`): when a
`/v1/messages` call routes to Anthropic, nothing needs translating, only metering.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from tally.pricing import TokenUsage

from . import chat_format as cf
from .base import ChatResult, Credential, ProviderAdapter, UpstreamError, UpstreamRequest
from .sse import SSEDecoder, SSEEvent
from .upstream_errors import body_excerpt, json_object, upstream_error

KIND = "anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_TRANSLATED = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)

# Anthropic's stop reasons in OpenAI's terms. `refusal` is the model's safety classifier
# stepping in, which OpenAI reports as content_filter.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# Status of each Anthropic error type, for errors that arrive inside a 200 stream.
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def messages_url(cred: Credential) -> str:
    base = (cred.base_url or DEFAULT_BASE_URL).rstrip("/")
    # Accept a base URL given with or without the API version, as the SDKs disagree.
    return f"{base}/messages" if base.endswith("/v1") else f"{base}/v1/messages"


def _headers(cred: Credential, stream: bool) -> dict[str, str]:
    if not cred.api_key:
        raise cf.invalid("the Anthropic credential has no API key")
    return {
        "x-api-key": cred.api_key,
        "anthropic-version": ANTHROPIC_VERSION,
        "content-type": "application/json",
        "accept": "text/event-stream" if stream else "application/json",
    }


def usage_from(usage: Mapping[str, Any]) -> TokenUsage:
    """Anthropic usage, whose `input_tokens` already excludes cache writes and reads."""
    output = int(usage.get("output_tokens") or 0)
    details = usage.get("output_tokens_details") or {}
    # `output_tokens` is the billed total; thinking is a breakdown of it.
    thinking = min(int(details.get("thinking_tokens") or 0), output)
    return TokenUsage(
        input_tokens=int(usage.get("input_tokens") or 0),
        cached_input_tokens=int(usage.get("cache_read_input_tokens") or 0),
        cache_write_tokens=int(usage.get("cache_creation_input_tokens") or 0),
        output_tokens=output - thinking,
        reasoning_tokens=thinking,
    )


# --- requests ---


def _image_block(url: str, where: str) -> dict[str, Any]:
    data = cf.parse_data_url(url, where)
    if data is not None:
        if data.media_type not in IMAGE_MEDIA_TYPES:
            raise cf.unsupported(KIND, f"images of type {data.media_type}", param="messages")
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": data.media_type, "data": data.data},
        }
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise cf.unsupported(KIND, f"image URLs with the scheme {url.split(':', 1)[0]!r}")


def _document_block(part: Mapping[str, Any], where: str) -> dict[str, Any]:
    data, filename = cf.file_data_of(KIND, part, where)
    if data.media_type != "application/pdf":
        raise cf.unsupported(KIND, f"file inputs of type {data.media_type}", param="messages")
    block: dict[str, Any] = {
        "type": "document",
        "source": {"type": "base64", "media_type": "application/pdf", "data": data.data},
    }
    if filename:
        block["title"] = filename
    return block


def _user_block(part: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    kind = part["type"]
    if kind == "text":
        text = cf.part_text(part, where)
        if not text:
            return None  # Anthropic refuses empty text blocks
        block: dict[str, Any] = {"type": "text", "text": text}
    elif kind == "image_url":
        block = _image_block(cf.image_url_of(part, where), where)
    elif kind == "file":
        block = _document_block(part, where)
    elif kind == "input_audio":
        raise cf.unsupported(KIND, "audio input", param="messages")
    else:
        raise cf.unsupported(KIND, f"content parts of type {kind!r}", param="messages")
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]  # prompt caching, passed through
    return block


def _user_blocks(parts: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    return [block for part in parts if (block := _user_block(part, where)) is not None]


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"type": "text", "text": text} for text in cf.assistant_texts(KIND, message, where)
    ]
    for call in message.get("tool_calls") or []:
        call_id, name, arguments = cf.tool_call_arguments(call, where)
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
    return blocks


def _tool_result_block(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise cf.invalid(f"{where}: a tool message needs `tool_call_id`", param="messages")
    content = _user_blocks(cf.content_parts(message.get("content"), where), where)
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if content:
        result["content"] = content
    return result


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    """Add a turn, merged into the previous one of the same role (Anthropic alternates)."""
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": list(blocks)})
    if role == "user":
        # Tool results must open the user turn that answers the tool calls.
        content = messages[-1]["content"]
        content.sort(key=lambda block: block["type"] != "tool_result")


def translate_messages(
    openai_messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages) in Anthropic's shape."""
    system, turns = cf.translate_turns(
        KIND,
        openai_messages,
        parts=_user_blocks,
        assistant=_assistant_blocks,
        tool=_tool_result_block,
    )
    messages: list[dict[str, Any]] = []
    for role, blocks in turns:
        _append(messages, role, blocks)
    return system, messages


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    tools = []
    for tool in cf.function_tools(KIND, body):
        if not _TOOL_NAME.match(tool.name):
            raise cf.unsupported(
                KIND,
                f"the tool name {tool.name!r} (allowed: letters, digits, _ and -, 1-64)",
                param="tools",
            )
        spec: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters}
        if tool.description:
            spec["description"] = tool.description
        if tool.strict:
            spec["strict"] = True
        tools.append(spec)
    return tools


def _tool_choice(body: Mapping[str, Any], has_tools: bool) -> dict[str, Any] | None:
    choice = cf.tool_choice(body)
    parallel = body.get("parallel_tool_calls")
    if choice is None:
        if not has_tools:
            return None
        choice = ("auto", None)
    mode, name = choice
    if not has_tools:
        if mode in ("auto", "none"):
            return None
        raise cf.invalid("`tool_choice` requires `tools`", param="tool_choice")
    if mode == "none":
        return {"type": "none"}
    result: dict[str, Any] = (
        {"type": "auto"}
        if mode == "auto"
        else {"type": "any"}
        if mode == "required"
        else {"type": "tool", "name": name}
    )
    if parallel is False:
        result["disable_parallel_tool_use"] = True
    return result


def messages_body(upstream_model: str, body: Mapping[str, Any], *, stream: bool) -> dict[str, Any]:
    """An OpenAI chat completion request as an Anthropic Messages request body."""
    cf.check_parameters(KIND, body, _TRANSLATED)
    system, messages = translate_messages(cf.messages_of(body))
    out: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": cf.max_output_tokens(body) or cf.DEFAULT_MAX_OUTPUT_TOKENS,
        "messages": messages,
    }
    if system:
        out["system"] = system
    temperature = cf.number(body, "temperature")
    if temperature is not None:
        if not 0 <= temperature <= 1:
            raise cf.unsupported(KIND, "a temperature outside 0-1", param="temperature")
        out["temperature"] = temperature
    top_p = cf.number(body, "top_p")
    if top_p is not None:
        out["top_p"] = top_p
    stops = cf.stop_sequences(body)
    if stops:
        out["stop_sequences"] = stops
    tools = _tools(body)
    if tools:
        out["tools"] = tools
    choice = _tool_choice(body, bool(tools))
    if choice is not None:
        out["tool_choice"] = choice
    if isinstance(body.get("user"), str) and body["user"]:
        out["metadata"] = {"user_id": body["user"]}
    if stream:
        out["stream"] = True
    return out


# --- responses ---


def message_to_completion(message: Mapping[str, Any], model: str | None = None) -> ChatResult:
    """An Anthropic Message as an OpenAI chat.completion."""
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            calls.append(cf.tool_call(block["id"], block["name"], block.get("input") or {}))
        elif kind == "thinking":
            thinking.append(block.get("thinking") or "")
    finish = FINISH_REASONS.get(str(message.get("stop_reason")), "stop")
    usage = usage_from(message.get("usage") or {})
    response = cf.completion(
        completion_id=str(message.get("id") or cf.new_completion_id()),
        model=model or str(message.get("model") or ""),
        choices=[
            cf.choice(
                0,
                text="".join(texts) if texts or not calls else None,
                tool_calls=calls,
                finish_reason=finish,
                reasoning="".join(thinking) or None,
            )
        ],
        usage=usage,
    )
    return ChatResult(response=response, usage=usage, finish_reason=finish)


def error_from(status: int, body: bytes) -> UpstreamError:
    payload = json_object(body)
    error = payload.get("error") if payload else None
    if isinstance(error, dict):
        return upstream_error(
            status, str(error.get("message") or "Anthropic error"), str(error.get("type"))
        )
    return upstream_error(status, body_excerpt(body), None)


class AnthropicStreamTranslator:
    """Anthropic's named SSE events -> OpenAI chunks.

    Input and cache counts come from `message_start` (a later `message_delta` may restate
    them); output is the cumulative count of the last `message_delta`. Usage is reported only
    once that final count arrived, so a cut stream is estimated by the gateway rather than
    charged for the placeholder output count of `message_start`.
    """

    def __init__(self, model: str) -> None:
        self.usage: TokenUsage | None = None
        self.error: UpstreamError | None = None
        self._writer = cf.ChunkWriter(model)
        self._decoder = SSEDecoder()
        self._usage: dict[str, Any] = {}
        self._tool_index: dict[int, int] = {}
        self._usage_sent = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for event in self._decoder.feed(data):
            self._event(event, chunks)
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for event in self._decoder.flush():
            self._event(event, chunks)
        self._send_usage(chunks)
        return chunks

    def _send_usage(self, chunks: list[dict[str, Any]]) -> None:
        if self.usage is not None and not self._usage_sent:
            self._usage_sent = True
            chunks.append(self._writer.usage(self.usage))

    def _event(self, event: SSEEvent, chunks: list[dict[str, Any]]) -> None:
        try:
            payload = json.loads(event.data)
        except ValueError:
            self.error = upstream_error(502, "Anthropic sent a malformed stream event", None)
            return
        kind = payload.get("type") if isinstance(payload, dict) else None
        if kind == "message_start":
            message = payload.get("message") or {}
            if message.get("id"):
                self._writer.id = str(message["id"])
            self._usage.update(message.get("usage") or {})
            chunks.append(self._writer.delta({"role": "assistant", "content": ""}))
        elif kind == "content_block_start":
            block = payload.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self._tool_index.setdefault(payload.get("index", 0), len(self._tool_index))
                call = {"index": index, **cf.tool_call(block["id"], block["name"], "")}
                chunks.append(self._writer.delta({"tool_calls": [call]}))
            elif block.get("type") == "text" and block.get("text"):
                chunks.append(self._writer.delta({"content": block["text"]}))
        elif kind == "content_block_delta":
            self._delta(payload, chunks)
        elif kind == "message_delta":
            delta = payload.get("delta") or {}
            usage = payload.get("usage") or {}
            # Counts here are cumulative totals; absent or null ones keep message_start's.
            self._usage.update({k: v for k, v in usage.items() if v is not None})
            self.usage = usage_from(self._usage)
            if delta.get("stop_reason"):
                finish = FINISH_REASONS.get(delta["stop_reason"], "stop")
                chunks.append(self._writer.delta({}, finish_reason=finish))
        elif kind == "message_stop":
            self._send_usage(chunks)
        elif kind == "error":
            error = payload.get("error") or {}
            error_type = str(error.get("type") or "api_error")
            self.error = upstream_error(
                ERROR_STATUS.get(error_type, 500),
                str(error.get("message") or error_type),
                error_type,
            )

    def _delta(self, payload: Mapping[str, Any], chunks: list[dict[str, Any]]) -> None:
        delta = payload.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            chunks.append(self._writer.delta({"content": delta["text"]}))
        elif kind == "input_json_delta" and delta.get("partial_json"):
            index = self._tool_index.get(payload.get("index", 0))
            if index is not None:
                call = {"index": index, "function": {"arguments": delta["partial_json"]}}
                chunks.append(self._writer.delta({"tool_calls": [call]}))
        elif kind == "thinking_delta" and delta.get("thinking"):
            chunks.append(self._writer.delta({"reasoning_content": delta["thinking"]}))


class MessagesStreamMeter:
    """Meters an Anthropic stream relayed unchanged to an Anthropic-format client."""

    def __init__(self) -> None:
        self._translator = AnthropicStreamTranslator("")

    @property
    def usage(self) -> TokenUsage | None:
        return self._translator.usage

    @property
    def error(self) -> UpstreamError | None:
        return self._translator.error

    def feed(self, data: bytes) -> None:
        self._translator.feed(data)

    def finish(self) -> None:
        self._translator.finish()


class AnthropicAdapter:
    """The ProviderAdapter for Anthropic's Messages API."""

    kind = KIND

    def chat_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamRequest:
        payload = messages_body(upstream_model, body, stream=stream)
        return UpstreamRequest(
            method="POST",
            url=messages_url(cred),
            headers=_headers(cred, stream),
            body=json.dumps(payload).encode(),
        )

    def chat_response(self, body: bytes) -> ChatResult:
        message = json_object(body)
        if message is None or message.get("type") != "message":
            raise upstream_error(502, "Anthropic returned an unreadable message", None)
        return message_to_completion(message)

    def stream_translator(self, model: str) -> AnthropicStreamTranslator:
        return AnthropicStreamTranslator(model)

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return error_from(status, body)

    def embeddings_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        raise cf.unsupported(KIND, "embeddings")

    def embeddings_response(
        self, body: bytes, request_body: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], TokenUsage]:
        raise cf.unsupported(KIND, "embeddings")

    def images_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        raise cf.unsupported(KIND, "image generation")

    def images_response(
        self, body: bytes, request_body: dict[str, Any]
    ) -> tuple[dict[str, Any], TokenUsage]:
        raise cf.unsupported(KIND, "image generation")

    # --- native pass-through for the inbound Anthropic API ---

    def messages_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamRequest:
        """An inbound Anthropic Messages request, forwarded as is to the routed model."""
        payload = {**body, "model": upstream_model}
        payload.pop("stream", None)
        if stream:
            payload["stream"] = True
        if not payload.get("max_tokens"):
            payload["max_tokens"] = cf.max_output_tokens(body) or cf.DEFAULT_MAX_OUTPUT_TOKENS
        payload.pop(cf.MODEL_MAX_OUTPUT_KEY, None)
        return UpstreamRequest(
            method="POST",
            url=messages_url(cred),
            headers=_headers(cred, stream),
            body=json.dumps(payload).encode(),
        )

    def messages_usage(self, body: bytes) -> tuple[dict[str, Any], TokenUsage]:
        """A relayed non-streaming Anthropic message and its usage."""
        message = json_object(body)
        if message is None or message.get("type") != "message":
            raise upstream_error(502, "Anthropic returned an unreadable message", None)
        return message, usage_from(message.get("usage") or {})

    def messages_stream_meter(self) -> MessagesStreamMeter:
        return MessagesStreamMeter()


# Registered by kind in gateway.providers.ADAPTERS.
PROVIDER_ADAPTERS: dict[str, ProviderAdapter] = {KIND: AnthropicAdapter()}
