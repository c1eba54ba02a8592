"""Reading and writing the internal format (OpenAI chat completions) for native adapters.

Every native adapter (Anthropic, Gemini, Bedrock) reads the same OpenAI-shaped request and
writes the same OpenAI-shaped response and chunks; what they share lives here so each adapter
holds only its own provider's mapping.

Parameters are accepted by whitelist: a parameter an adapter does not translate is refused
with `UnsupportedFeature` naming it, unless its value is the neutral default (`n: 1`,
`logprobs: false`, a zero penalty, ...), so nothing a client asked for is silently dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tally.errors import InvalidRequest
from tally.pricing import TokenUsage

from .base import MODEL_MAX_OUTPUT_KEY as MODEL_MAX_OUTPUT_KEY
from .base import UnsupportedFeature

# Used only when neither the client nor the gateway gave a cap and the provider needs one.
DEFAULT_MAX_OUTPUT_TOKENS = 4096

PROVIDER_NAMES = {"anthropic": "Anthropic", "gemini": "Google Gemini", "bedrock": "Amazon Bedrock"}

# Parameters every native adapter accepts without translating them: the routing keys the
# gateway consumes itself, and metadata that never changes what the model generates.
# `stream_options` is the gateway's: it always asks adapters for usage and strips the usage
# chunk for clients that did not ask for it. `user`/`metadata` are end-user tags for the
# caller's own bookkeeping (Anthropic gets `user` as metadata.user_id).
GATEWAY_KEYS = frozenset(
    {"model", "messages", "stream", "stream_options", MODEL_MAX_OUTPUT_KEY, "user", "metadata"}
)

# A parameter at one of these values asks for nothing, so a provider lacking it can still honour
# the request.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1,),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logit_bias": ({},),
    "parallel_tool_calls": (True,),
    "store": (False,),
    "modalities": (["text"],),
    "service_tier": ("auto", "default"),
    "response_format": ({"type": "text"},),
    "tools": ([],),
}


def unsupported(kind: str, feature: str, *, param: str | None = None) -> UnsupportedFeature:
    """The 400 for a feature `kind` lacks; the message names the feature and the provider."""
    provider = PROVIDER_NAMES.get(kind, kind)
    return UnsupportedFeature(f"{feature} is not supported by {provider}", param=param)


def invalid(message: str, *, param: str | None = None) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def check_parameters(kind: str, body: Mapping[str, Any], translated: Iterable[str]) -> None:
    """Refuse every parameter the adapter does not translate, unless it is null or neutral."""
    known = GATEWAY_KEYS.union(translated)
    for key, value in body.items():
        if key in known or value is None:
            continue
        if key in _NEUTRAL and value in _NEUTRAL[key]:
            continue
        raise unsupported(kind, f"the parameter `{key}`", param=key)


def max_output_tokens(body: Mapping[str, Any]) -> int | None:
    """The client's output cap, else the routed model's cap the gateway put in the body."""
    for key in ("max_completion_tokens", "max_tokens", MODEL_MAX_OUTPUT_KEY):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(f"`{key}` must be a positive integer", param=key)
        return value
    return None


def stop_sequences(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise invalid("`stop` must be a string or a list of strings", param="stop")


def number(body: Mapping[str, Any], key: str) -> float | int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(f"`{key}` must be a number", param=key)
    return value


def messages_of(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("`messages` must be a non-empty list", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise invalid(f"messages[{i}] must be an object with a `role`", param="messages")
    return messages


def content_parts(content: Any, where: str) -> list[dict[str, Any]]:
    """A message's content as a list of typed parts (a plain string is one text part)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise invalid(f"{where}: every content part needs a `type`", param="messages")
        return content
    raise invalid(f"{where}: `content` must be a string or a list of parts", param="messages")


Blocks = list[dict[str, Any]]
PartsBlocks = Callable[[list[dict[str, Any]], str], Blocks]
MessageBlocks = Callable[[Mapping[str, Any], str], Blocks]


def translate_turns(
    kind: str,
    messages: list[dict[str, Any]],
    *,
    parts: PartsBlocks,
    assistant: MessageBlocks,
    tool: Callable[[Mapping[str, Any], str], dict[str, Any]],
    system: MessageBlocks | None = None,
) -> tuple[Blocks, list[tuple[str, Blocks]]]:
    """OpenAI's messages as (system blocks, turns): each turn "user" or "assistant" and its
    blocks, in order, empty ones dropped; a tool result is a user turn.

    The callables build one provider's blocks (`where` names the message in errors): `parts`
    from a user message's content parts, and from a system message's (text only) unless
    `system` builds those; `assistant` and `tool` from the whole message. The roles are told
    apart here, the same for every adapter, which then merges the turns the way its provider
    wants them.
    """
    system_blocks: Blocks = []
    turns: list[tuple[str, Blocks]] = []
    for i, message in enumerate(messages):
        role, where = message["role"], f"messages[{i}]"
        if role in ("system", "developer"):
            if system is not None:
                system_blocks.extend(system(message, where))
            else:
                system_blocks.extend(parts(system_parts(kind, message, where), where))
            continue
        if role == "user":
            turn = ("user", parts(content_parts(message.get("content"), where), where))
        elif role == "assistant":
            turn = ("assistant", assistant(message, where))
        elif role == "tool":
            turn = ("user", [tool(message, where)])
        elif role == "function":
            raise unsupported(kind, "legacy `function` messages (use tools)", param="messages")
        else:
            raise invalid(f"{where}: unknown role {role!r}", param="messages")
        if turn[1]:
            turns.append(turn)
    if not turns:
        raise invalid("`messages` needs at least one user or assistant message", param="messages")
    return system_blocks, turns


def system_parts(kind: str, message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """A system message's parts, which may only be text."""
    parts = content_parts(message.get("content"), where)
    for part in parts:
        if part["type"] != "text":
            raise unsupported(kind, f"{part['type']} content in system messages")
    return parts


def assistant_texts(kind: str, message: Mapping[str, Any], where: str) -> list[str]:
    """The texts of an assistant message's content (text and refusal parts), empty ones left
    out; its tool calls are read with `tool_call_arguments`."""
    texts = []
    for part in content_parts(message.get("content"), where):
        if part["type"] in ("text", "refusal"):
            text = part.get("text") if part["type"] == "text" else part.get("refusal")
            if isinstance(text, str) and text:
                texts.append(text)
        else:
            raise unsupported(kind, f"{part['type']} content in assistant messages")
    return texts


def text_only(kind: str, content: Any, where: str) -> str:
    """Content that can only be text (system prompts, tool results on some providers)."""
    texts = []
    for part in content_parts(content, where):
        if part["type"] != "text":
            raise unsupported(kind, f"{part['type']} content in {where}", param="messages")
        texts.append(_text_of(part, where))
    return "\n".join(texts)


def _text_of(part: Mapping[str, Any], where: str) -> str:
    text = part.get("text")
    if not isinstance(text, str):
        raise invalid(f"{where}: a text part needs `text`", param="messages")
    return text


def part_text(part: Mapping[str, Any], where: str) -> str:
    return _text_of(part, where)


class DataUrl:
    """A `data:<media type>;base64,<data>` URL, split."""

    __slots__ = ("data", "media_type")

    def __init__(self, media_type: str, data: str) -> None:
        self.media_type = media_type
        self.data = data


def parse_data_url(url: str, where: str) -> DataUrl | None:
    """The parts of a base64 data URL; None for any other URL. Bad base64 is a 400."""
    if not url.startswith("data:"):
        return None
    header, sep, data = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        raise invalid(f"{where}: data URLs must be base64 encoded", param="messages")
    media_type = header[: -len(";base64")].split(";", 1)[0].strip().lower()
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"{where}: the data URL is not valid base64", param="messages") from None
    return DataUrl(media_type or "application/octet-stream", data)


def image_url_of(part: Mapping[str, Any], where: str) -> str:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise invalid(f"{where}: an image_url part needs `image_url.url`", param="messages")
    return url


def file_data_of(kind: str, part: Mapping[str, Any], where: str) -> tuple[DataUrl, str | None]:
    """An inline `file` part (a PDF, ...): its data and filename. Uploaded file ids are refused."""
    file = part.get("file")
    if not isinstance(file, dict):
        raise invalid(f"{where}: a file part needs `file`", param="messages")
    data = file.get("file_data")
    if not isinstance(data, str):
        raise unsupported(kind, "file inputs by `file_id` (send `file_data`)", param="messages")
    parsed = parse_data_url(data, where)
    if parsed is None:
        raise invalid(f"{where}: `file_data` must be a base64 data URL", param="messages")
    filename = file.get("filename")
    return parsed, filename if isinstance(filename, str) else None


def tool_call_arguments(call: Mapping[str, Any], where: str) -> tuple[str, str, dict[str, Any]]:
    """(id, function name, parsed arguments) of an assistant tool call."""
    function = call.get("function")
    if call.get("type", "function") != "function" or not isinstance(function, dict):
        raise invalid(f"{where}: only function tool calls can be replayed", param="messages")
    call_id, name = call.get("id"), function.get("name")
    if not isinstance(call_id, str) or not isinstance(name, str):
        raise invalid(f"{where}: a tool call needs `id` and `function.name`", param="messages")
    raw = function.get("arguments") or "{}"
    try:
        arguments = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        raise invalid(
            f"{where}: tool call arguments are not valid JSON", param="messages"
        ) from None
    if not isinstance(arguments, dict):
        raise invalid(f"{where}: tool call arguments must be a JSON object", param="messages")
    return call_id, name, arguments


class FunctionTool:
    """One function tool of the request, checked."""

    __slots__ = ("description", "name", "parameters", "strict")

    def __init__(
        self, name: str, description: str | None, parameters: dict[str, Any], strict: bool
    ) -> None:
        self.name = name
        self.description = description
        self.parameters = parameters
        self.strict = strict


def function_tools(kind: str, body: Mapping[str, Any]) -> list[FunctionTool]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise invalid("`tools` must be a list", param="tools")
    result = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise invalid(f"tools[{i}] must be an object", param="tools")
        if tool.get("type") != "function":
            raise unsupported(kind, f"tools of type {tool.get('type')!r}", param="tools")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid(f"tools[{i}].function.name is required", param="tools")
        parameters = function.get("parameters")
        if parameters is None:
            parameters = {"type": "object", "properties": {}}
        if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
            raise unsupported(
                kind,
                f"tool `{function['name']}`: parameter schemas other than a JSON object",
                param="tools",
            )
        description = function.get("description")
        result.append(
            FunctionTool(
                function["name"],
                description if isinstance(description, str) else None,
                parameters,
                bool(function.get("strict")),
            )
        )
    return result


def tool_choice(body: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """("auto"|"none"|"required", None) or ("function", name); None when not given."""
    choice = body.get("tool_choice")
    if choice is None:
        return None
    if choice in ("auto", "none", "required"):
        return str(choice), None
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return "function", function["name"]
    raise invalid(
        '`tool_choice` must be "auto", "none", "required" or a named function',
        param="tool_choice",
    )


def response_format(body: Mapping[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """("text"|"json_object", None) or ("json_schema", schema)."""
    fmt = body.get("response_format")
    if fmt is None:
        return "text", None
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind in ("text", "json_object"):
            return str(kind), None
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            schema = spec.get("schema") if isinstance(spec, dict) else None
            if isinstance(schema, dict):
                return "json_schema", schema
    raise invalid("`response_format` is not a valid response format", param="response_format")


def tool_names_by_call_id(messages: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Function name of every tool call in the history (tool results only carry the id)."""
    names: dict[str, str] = {}
    for message in messages:
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(call.get("id"), str):
                names[call["id"]] = str(function.get("name"))
    return names


# --- writing the internal format ---


def openai_usage(usage: TokenUsage) -> dict[str, Any]:
    """TokenUsage in OpenAI's shape, where cached tokens and reasoning are subsets."""
    prompt = usage.total_input_tokens
    completion = usage.total_output_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def completion(
    *,
    completion_id: str,
    model: str,
    choices: list[dict[str, Any]],
    usage: TokenUsage,
) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": openai_usage(usage),
    }


def choice(
    index: int,
    *,
    text: str | None,
    tool_calls: list[dict[str, Any]],
    finish_reason: str | None,
    reasoning: str | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        # DeepSeek's field name, which several OpenAI-compatible clients already read.
        message["reasoning_content"] = reasoning
    return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": None}


def tool_call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {
            "name": name,
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


class ChunkWriter:
    """Builds the chat.completion.chunk dicts of one stream (shared id, model, created)."""

    def __init__(self, model: str, completion_id: str | None = None) -> None:
        self.id = completion_id or new_completion_id()
        self.model = model
        self.created = int(time.time())

    def _chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage,
        }

    def delta(
        self, delta: dict[str, Any], *, index: int = 0, finish_reason: str | None = None
    ) -> dict[str, Any]:
        return self._chunk(
            [{"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}],
            None,
        )

    def usage(self, usage: TokenUsage) -> dict[str, Any]:
        """The closing usage chunk, as OpenAI sends it for `include_usage`: no choices."""
        return self._chunk([], openai_usage(usage))


# --- embeddings ---

_EMBEDDING_KEYS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


def embedding_inputs(kind: str, body: Mapping[str, Any]) -> list[str]:
    """The texts of an OpenAI embeddings request; token-array inputs are refused."""
    for key, value in body.items():
        if key not in _EMBEDDING_KEYS and value is not None:
            raise unsupported(kind, f"the embeddings parameter `{key}`", param=key)
    if body.get("encoding_format") not in (None, "float", "base64"):
        raise invalid('`encoding_format` must be "float" or "base64"', param="encoding_format")
    raw = body.get("input")
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list) or not texts:
        raise invalid("`input` must be a string or a non-empty list of strings", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise unsupported(kind, "token-array embedding inputs (send text)", param="input")
    if any(not t for t in texts):
        raise invalid("`input` cannot contain empty strings", param="input")
    return texts


def estimate_tokens(texts: Iterable[str]) -> int:
    """About four characters a token: for providers that do not report embedding usage."""
    return sum(-(-len(text) // 4) for text in texts)


def embeddings_list(
    vectors: list[list[float]], *, model: str, encoding_format: str | None, usage: TokenUsage
) -> dict[str, Any]:
    """OpenAI's embeddings response; base64 is little-endian float32, as OpenAI sends it."""
    data = []
    for index, vector in enumerate(vectors):
        embedding: Any = vector
        if encoding_format == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = usage.total_input_tokens
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }
