"""The inbound Anthropic Messages API (`POST /v1/messages`), translated to and from the
internal format (OpenAI chat completions), so a Claude client can use any routed model.

The gateway calls, for a route that is not Anthropic:
  1. `messages_to_chat_request(body)` -> internal request (raises UnsupportedFeature / 400);
  2. the routed adapter as for `/v1/chat/completions`;
  3. `chat_result_to_message(result.response, result.usage, model=...)` for a plain call, or
     one `MessagesStreamEncoder` per stream: `feed(chunk)` for every internal chunk,
     `finish(usage)` at the end (or `error(...)` for an in-stream error), each returning the
     SSE bytes to write;
  4. `error_body(status, message, type)` for errors, in Anthropic's error shape.
When the route is Anthropic the request is relayed natively instead (AnthropicAdapter's
`messages_request` / `messages_usage`; streams are relayed byte for byte and metered by its
stream translator). `INBOUND` is this module as the gateway's `InboundTranslator` hook.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from tally.errors import TallyError
from tally.pricing import TokenUsage

from . import chat_format as cf
from .base import UnsupportedFeature

# Parameters that only mean something to Anthropic's own models; translating them for another
# provider would change what the caller asked for, so they are refused off the native route.
_NATIVE_ONLY = {
    "top_k": "`top_k`",
    "thinking": "extended thinking (`thinking`)",
    "container": "`container`",
    "mcp_servers": "MCP servers (`mcp_servers`)",
    "context_management": "`context_management`",
}
_ACCEPTED = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "tools",
        "tool_choice",
        "metadata",
        "service_tier",
    }
)

# OpenAI finish reasons as Anthropic stop reasons.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# The gateway's (OpenAI) error types and statuses as Anthropic error types.
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "rate_limit_error": "rate_limit_error",
    "insufficient_quota": "billing_error",
    "timeout_error": "timeout_error",
    "server_error": "api_error",
}
_ERROR_TYPES_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def _refuse(feature: str, param: str | None = None) -> UnsupportedFeature:
    return UnsupportedFeature(
        f"{feature} is only supported when the model routes to Anthropic", param=param
    )


# --- request: Anthropic -> internal ---


def _image_part(source: Mapping[str, Any], where: str) -> dict[str, Any]:
    kind = source.get("type")
    if kind == "base64":
        url = f"data:{source.get('media_type')};base64,{source.get('data')}"
    elif kind == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise _refuse(f"{where}: image sources of type {kind!r}", "messages")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "base64":
        file: dict[str, Any] = {
            "file_data": f"data:{source.get('media_type')};base64,{source.get('data')}"
        }
        if isinstance(block.get("title"), str):
            file["filename"] = block["title"]
        return {"type": "file", "file": file}
    if kind == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    raise _refuse(f"{where}: document sources of type {kind!r}", "messages")


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return content
    raise cf.invalid(f"{where}: `content` must be a string or a list of blocks", param="messages")


def _content_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A user-side content block (text, image, document) as an OpenAI content part."""
    kind = block.get("type")
    # cache_control is a caching hint for Anthropic's own cache; other providers cache
    # implicitly or not at all, so it is not carried over.
    if kind == "text":
        if not isinstance(block.get("text"), str):
            raise cf.invalid(f"{where}: a text block needs `text`", param="messages")
        return {"type": "text", "text": block["text"]}
    if kind == "image":
        return _image_part(block.get("source") or {}, where)
    if kind == "document":
        return _document_part(block, where)
    raise _refuse(f"{kind!r} content blocks", "messages")


def _tool_message(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    tool_use_id = block.get("tool_use_id")
    if not isinstance(tool_use_id, str):
        raise cf.invalid(f"{where}: a tool_result block needs `tool_use_id`", param="messages")
    raw = block.get("content")
    parts = [_content_part(b, where) for b in _blocks(raw, where)] if raw is not None else []
    if block.get("is_error"):
        # OpenAI tool messages have no error flag; say it in the content instead.
        parts.insert(0, {"type": "text", "text": "Error:"})
    if all(p["type"] == "text" for p in parts):
        content: Any = "\n".join(p["text"] for p in parts)
    else:
        content = parts
    return {"role": "tool", "tool_call_id": tool_use_id, "content": content}


def _user_messages(content: Any, where: str) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in _blocks(content, where):
        if block.get("type") == "tool_result":
            tools.append(_tool_message(block, where))
        else:
            parts.append(_content_part(block, where))
    messages = tools
    if parts:
        text_only = all(p["type"] == "text" for p in parts)
        body: Any = "\n".join(p["text"] for p in parts) if text_only else parts
        messages.append({"role": "user", "content": body})
    return messages


def _assistant_message(content: Any, where: str) -> dict[str, Any] | None:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in _blocks(content, where):
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise cf.invalid(
                    f"{where}: a tool_use block needs `id` and `name`", param="messages"
                )
            calls.append(cf.tool_call(block["id"], block["name"], block.get("input") or {}))
        elif kind in ("thinking", "redacted_thinking"):
            # Earlier turns' thinking only means something to the model that produced it
            # (Anthropic itself ignores it in past turns); another model cannot use it.
            continue
        else:
            raise _refuse(f"{kind!r} content blocks", "messages")
    if not texts and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise cf.invalid("`tools` must be a list", param="tools")
    result = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise cf.invalid(f"tools[{i}] needs a `name`", param="tools")
        if tool.get("type") not in (None, "custom"):
            raise _refuse(f"the tool type {tool['type']!r}", "tools")
        function: dict[str, Any] = {
            "name": tool["name"],
            "parameters": tool.get("input_schema") or {"type": "object", "properties": {}},
        }
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if tool.get("strict"):
            function["strict"] = True
        result.append({"type": "function", "function": function})
    return result


def _tool_choice(choice: Any, out: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise cf.invalid("`tool_choice` must be an object", param="tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise cf.invalid("`tool_choice.type` must be auto, any, tool or none", param="tool_choice")
    if choice.get("disable_parallel_tool_use"):
        out["parallel_tool_calls"] = False


def messages_to_chat_request(
    body: Mapping[str, Any], *, native_only: bool = False
) -> dict[str, Any]:
    """An Anthropic Messages request as the internal (OpenAI chat completions) request.

    `native_only`: the request goes to an Anthropic route as it is, so Anthropic-only
    parameters are left out instead of refused (the translation then only sizes the hold).
    """
    for key, value in body.items():
        if key in _NATIVE_ONLY:
            if native_only:
                continue
            if key == "thinking" and isinstance(value, dict) and value.get("type") == "disabled":
                continue
            if value is not None:
                raise _refuse(_NATIVE_ONLY[key], key)
        elif key not in _ACCEPTED and value is not None:
            raise _refuse(f"the parameter `{key}`", key)
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise cf.invalid(
            "`max_tokens` is required and must be a positive integer", param="max_tokens"
        )
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise cf.invalid("`messages` must be a non-empty list", param="messages")

    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system is not None:
        text = "\n".join(
            str(p["text"])
            for p in (_content_part(b, "system") for b in _blocks(system, "system"))
            if p["type"] == "text"
        )
        if text:
            messages.append({"role": "system", "content": text})
    for i, message in enumerate(raw_messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role == "user":
            messages.extend(_user_messages(message.get("content"), where))
        elif role == "assistant":
            assistant = _assistant_message(message.get("content"), where)
            if assistant is not None:
                messages.append(assistant)
        else:
            raise cf.invalid(f'{where}: `role` must be "user" or "assistant"', param="messages")

    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    out["max_tokens"] = max_tokens
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    stops = body.get("stop_sequences")
    if stops:
        out["stop"] = stops
    if body.get("tools"):
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], out)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("user_id"), str):
        out["user"] = metadata["user_id"]
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


# --- response: internal -> Anthropic ---


def anthropic_usage(usage: TokenUsage) -> dict[str, int]:
    """TokenUsage in Anthropic's terms: input excludes cache writes and reads."""
    return {
        "input_tokens": usage.input_tokens,
        "cache_creation_input_tokens": usage.cache_write_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.total_output_tokens,
    }


def usage_from_openai(usage: Mapping[str, Any]) -> TokenUsage:
    """An OpenAI usage object back as disjoint counts (cached and reasoning are subsets)."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    cached = int(prompt_details.get("cached_tokens") or 0)
    written = int(prompt_details.get("cache_write_tokens") or 0)
    reasoning = int(completion_details.get("reasoning_tokens") or 0)
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    return TokenUsage(
        input_tokens=max(prompt - cached - written, 0),
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=max(completion - reasoning, 0),
        reasoning_tokens=reasoning,
    )


def _message_id(completion_id: Any) -> str:
    text = str(completion_id or "")
    if text.startswith("msg_"):
        return text
    return f"msg_{text.removeprefix('chatcmpl-') or uuid.uuid4().hex}"


def _tool_input(arguments: Any) -> dict[str, Any]:
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments or "{}")
    except (TypeError, ValueError):
        value = None
    # Anthropic tool inputs are objects; a model's malformed arguments are kept, not lost.
    return value if isinstance(value, dict) else {"arguments": arguments}


def chat_result_to_message(
    response: Mapping[str, Any], usage: TokenUsage, *, model: str
) -> dict[str, Any]:
    """An internal chat.completion as an Anthropic Message (`model` is the caller's name)."""
    choices = response.get("choices") or [{}]
    message = choices[0].get("message") or {}
    content: list[dict[str, Any]] = []
    if isinstance(message.get("content"), str) and message["content"]:
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": _tool_input(function.get("arguments")),
            }
        )
    return {
        "id": _message_id(response.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS.get(str(choices[0].get("finish_reason")), "end_turn"),
        "stop_sequence": None,
        "usage": anthropic_usage(usage),
    }


def error_type_for(status: int, openai_type: str | None = None) -> str:
    if status in (413, 529, 504, 402):
        return _ERROR_TYPES_BY_STATUS[status]
    if openai_type in _ERROR_TYPES:
        return _ERROR_TYPES[openai_type]
    return _ERROR_TYPES_BY_STATUS.get(
        status, "api_error" if status >= 500 else "invalid_request_error"
    )


def error_body(status: int, message: str, openai_type: str | None = None) -> dict[str, Any]:
    """An error in Anthropic's shape, which the `anthropic` SDK reads."""
    return {
        "type": "error",
        "error": {"type": error_type_for(status, openai_type), "message": message},
    }


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class MessagesStreamEncoder:
    """Internal chat.completion.chunk dicts in, Anthropic SSE event bytes out.

    Text and each tool call become content blocks in order; the stop reason and the usage
    (which the internal stream only reports at its end) go into one closing `message_delta`,
    whose counts the Anthropic SDK takes as the final totals.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._started = False
        self._closed = False
        self._block = -1  # index of the last block started
        self._open: str | None = None  # type of the open block
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool-call index -> block index
        self._stop_reason: str | None = None
        self._usage: TokenUsage | None = None
        self._id = f"msg_{uuid.uuid4().hex}"

    def _start(self, out: list[bytes], completion_id: Any = None) -> None:
        if self._started:
            return
        self._started = True
        if completion_id:
            self._id = _message_id(completion_id)
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # The real counts arrive with the closing message_delta.
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        out.append(_sse("message_start", {"type": "message_start", "message": message}))

    def _close_block(self, out: list[bytes]) -> None:
        if self._open is not None:
            out.append(
                _sse("content_block_stop", {"type": "content_block_stop", "index": self._block})
            )
            self._open = None

    def _open_block(self, out: list[bytes], block: dict[str, Any]) -> int:
        self._close_block(out)
        self._block += 1
        self._open = str(block["type"])
        out.append(
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": self._block, "content_block": block},
            )
        )
        return self._block

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        """One internal chunk; returns the SSE bytes to write (possibly empty)."""
        out: list[bytes] = []
        if self._closed:
            return b""
        self._start(out, chunk.get("id"))
        if isinstance(chunk.get("usage"), dict):
            self._usage = usage_from_openai(chunk["usage"])
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._open != "text":
                    self._open_block(out, {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": text}))
            for call in delta.get("tool_calls") or []:
                self._tool_call(call, out)
            if choice.get("finish_reason"):
                self._stop_reason = STOP_REASONS.get(choice["finish_reason"], "end_turn")
                self._close_block(out)
        return b"".join(out)

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        block = self._block if index is None else index
        return _sse(
            "content_block_delta", {"type": "content_block_delta", "index": block, "delta": delta}
        )

    def _tool_call(self, call: Mapping[str, Any], out: list[bytes]) -> None:
        position = int(call.get("index", 0))
        function = call.get("function") or {}
        if position not in self._tool_blocks:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name") or "",
                "input": {},
            }
            self._tool_blocks[position] = self._open_block(out, block)
        arguments = function.get("arguments")
        if arguments:
            out.append(
                self._delta(
                    {"type": "input_json_delta", "partial_json": arguments},
                    self._tool_blocks[position],
                )
            )

    def finish(self, usage: TokenUsage | None = None) -> bytes:
        """Close the message: `usage` is what the gateway metered (else the stream's own)."""
        out: list[bytes] = []
        if self._closed:
            return b""
        self._start(out)
        self._close_block(out)
        self._closed = True
        final = usage or self._usage or TokenUsage()
        out.append(
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": self._stop_reason or "end_turn",
                        "stop_sequence": None,
                    },
                    "usage": anthropic_usage(final),
                },
            )
        )
        out.append(_sse("message_stop", {"type": "message_stop"}))
        return b"".join(out)

    def error(self, status: int, message: str, openai_type: str | None = None) -> bytes:
        """An in-stream `error` event (the HTTP status is already 200); ends the stream."""
        self._closed = True
        return _sse("error", error_body(status, message, openai_type))


class AnthropicInbound:
    """`/v1/messages` for the gateway (`gateway.providers.inbound.InboundTranslator`)."""

    native_kind: str | None = "anthropic"

    def request_to_openai(
        self, body: dict[str, Any], *, native_only: bool = False
    ) -> dict[str, Any]:
        return messages_to_chat_request(body, native_only=native_only)

    def response_from_openai(
        self, response: dict[str, Any], usage: TokenUsage, *, model: str
    ) -> dict[str, Any]:
        return chat_result_to_message(response, usage, model=model)

    def stream_encoder(self, model: str) -> MessagesStreamEncoder:
        return MessagesStreamEncoder(model)

    def error_body(self, error: TallyError) -> bytes:
        body = error_body(error.status_code, error.message, error.error_type)
        return json.dumps(body).encode()


INBOUND = AnthropicInbound()
