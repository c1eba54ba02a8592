"""Google Gemini adapter: OpenAI chat completions <-> `generateContent` /
`streamGenerateContent?alt=sse`, OpenAI embeddings <-> `embedContent` / `batchEmbedContents`.

Quirks handled here: roles are `user` and `model`; the system prompt is `systemInstruction`;
function calls are `functionCall` parts and results `functionResponse` parts that name the
function (OpenAI tool messages only carry the call id, so the name is looked up in the
history); a blocked prompt returns no candidates and a `promptFeedback.blockReason`, answered as
`finish_reason: "content_filter"`; `promptTokenCount` includes the cached tokens and
`thoughtsTokenCount` is beside `candidatesTokenCount`.

Gemini's function calls carry no id; newer models attach a `thoughtSignature` that must come
back with the call in later turns. Both ride in the OpenAI tool-call id, which clients echo
verbatim: `call_<random>` or `call_<random>__ts__<signature>`.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from tally.pricing import TokenUsage

from . import chat_format as cf
from .base import ChatResult, Credential, ProviderAdapter, UpstreamError, UpstreamRequest
from .sse import SSEDecoder
from .upstream_errors import body_excerpt, json_object, upstream_error

KIND = "gemini"
DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
_SIGNATURE_MARK = "__ts__"
_FUNCTION_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,63}$")
_AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mp3"}
_TRANSLATED = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "n",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "reasoning_effort",
        "tools",
        "tool_choice",
    }
)
# Google's own OpenAI-compatibility layer maps reasoning effort to these thinking budgets.
_THINKING_BUDGET = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192, "high": 24576}

_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)


def finish_reason(gemini_reason: str | None, called_tools: bool) -> str | None:
    if not gemini_reason or gemini_reason == "FINISH_REASON_UNSPECIFIED":
        return None
    if gemini_reason == "MAX_TOKENS":
        return "length"
    if gemini_reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if called_tools else "stop"


def usage_from(meta: Mapping[str, Any]) -> TokenUsage:
    """Gemini usageMetadata: cached tokens are a subset of the prompt; thoughts are not output."""
    prompt = int(meta.get("promptTokenCount") or 0)
    cached = min(int(meta.get("cachedContentTokenCount") or 0), prompt)
    return TokenUsage(
        # Tool-use prompt tokens (fed back by built-in tools) are input the caller pays for.
        input_tokens=prompt - cached + int(meta.get("toolUsePromptTokenCount") or 0),
        cached_input_tokens=cached,
        output_tokens=int(meta.get("candidatesTokenCount") or 0),
        reasoning_tokens=int(meta.get("thoughtsTokenCount") or 0),
    )


def _base(cred: Credential) -> str:
    return (cred.base_url or DEFAULT_BASE_URL).rstrip("/")


def _model_path(upstream_model: str) -> str:
    model = upstream_model.removeprefix("models/")
    return f"models/{quote(model, safe='')}"


def _headers(cred: Credential) -> dict[str, str]:
    if not cred.api_key:
        raise cf.invalid("the Gemini credential has no API key")
    return {"x-goog-api-key": cred.api_key, "content-type": "application/json"}


def encode_call_id(signature: str | None) -> str:
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    return f"{call_id}{_SIGNATURE_MARK}{signature}" if signature else call_id


def decode_call_signature(call_id: str) -> str | None:
    _, mark, signature = call_id.partition(_SIGNATURE_MARK)
    return signature if mark and signature else None


# --- requests ---


def _inline(data: cf.DataUrl) -> dict[str, Any]:
    return {"inlineData": {"mimeType": data.media_type, "data": data.data}}


def _user_part(part: Mapping[str, Any], where: str) -> dict[str, Any] | None:
    kind = part["type"]
    if kind == "text":
        text = cf.part_text(part, where)
        return {"text": text} if text else None
    if kind == "image_url":
        url = cf.image_url_of(part, where)
        data = cf.parse_data_url(url, where)
        if data is None:
            raise cf.unsupported(
                KIND, "image URLs (send the image inline as a base64 data: URL)", param="messages"
            )
        if not data.media_type.startswith("image/"):
            raise cf.invalid(f"{where}: the image data URL is not an image", param="messages")
        return _inline(data)
    if kind == "file":
        data, _ = cf.file_data_of(KIND, part, where)
        return _inline(data)
    if kind == "input_audio":
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
            raise cf.invalid(f"{where}: an input_audio part needs `data`", param="messages")
        mime = _AUDIO_FORMATS.get(str(audio.get("format")))
        if mime is None:
            raise cf.unsupported(KIND, f"audio input in format {audio.get('format')!r}")
        return {"inlineData": {"mimeType": mime, "data": audio["data"]}}
    raise cf.unsupported(KIND, f"content parts of type {kind!r}", param="messages")


def _model_parts(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [
        {"text": text} for text in cf.assistant_texts(KIND, message, where)
    ]
    for call in message.get("tool_calls") or []:
        call_id, name, arguments = cf.tool_call_arguments(call, where)
        function_part: dict[str, Any] = {"functionCall": {"name": name, "args": arguments}}
        signature = decode_call_signature(call_id)
        if signature:
            function_part["thoughtSignature"] = signature
        parts.append(function_part)
    return parts


def _function_response(
    message: Mapping[str, Any], names: Mapping[str, str], where: str
) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str) or call_id not in names:
        raise cf.invalid(
            f"{where}: `tool_call_id` must name a tool call of an earlier assistant message",
            param="messages",
        )
    result = cf.text_only(KIND, message.get("content"), where)
    # The shape python-genai uses for automatic function calling results.
    return {"functionResponse": {"name": names[call_id], "response": {"result": result}}}


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": list(parts)})


def _system_parts(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    text = cf.text_only(KIND, message.get("content"), where)
    return [{"text": text}] if text else []


def _user_parts(parts: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    return [part for p in parts if (part := _user_part(p, where)) is not None]


def translate_messages(
    messages: list[dict[str, Any]],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(systemInstruction, contents) in Gemini's shape."""
    names = cf.tool_names_by_call_id(messages)
    system, turns = cf.translate_turns(
        KIND,
        messages,
        parts=_user_parts,
        assistant=_model_parts,
        tool=lambda m, where: _function_response(m, names, where),
        system=_system_parts,
    )
    contents: list[dict[str, Any]] = []
    for role, parts in turns:
        _append(contents, "model" if role == "assistant" else "user", parts)
    return ({"parts": system} if system else None), contents


def _tools(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    declarations = []
    for tool in cf.function_tools(KIND, body):
        if not _FUNCTION_NAME.match(tool.name):
            raise cf.unsupported(
                KIND,
                f"the function name {tool.name!r} (allowed: a letter or _ first, then letters, "
                "digits, _ . : -, up to 64)",
                param="tools",
            )
        if tool.strict:
            raise cf.unsupported(KIND, "strict function schemas (`strict: true`)", param="tools")
        declaration: dict[str, Any] = {"name": tool.name, "parametersJsonSchema": tool.parameters}
        if tool.description:
            declaration["description"] = tool.description
        declarations.append(declaration)
    return [{"functionDeclarations": declarations}] if declarations else []


def _tool_config(body: Mapping[str, Any], has_tools: bool) -> dict[str, Any] | None:
    choice = cf.tool_choice(body)
    if choice is None:
        return None
    mode, name = choice
    if not has_tools:
        if mode in ("auto", "none"):
            return None
        raise cf.invalid("`tool_choice` requires `tools`", param="tool_choice")
    config: dict[str, Any] = {
        "mode": {"auto": "AUTO", "none": "NONE"}.get(mode, "ANY"),
    }
    if mode == "function":
        config["allowedFunctionNames"] = [name]
    return {"functionCallingConfig": config}


def _generation_config(body: Mapping[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    cap = cf.max_output_tokens(body)
    if cap is not None:
        config["maxOutputTokens"] = cap
    for key, name in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        value = cf.number(body, key)
        if value is not None:
            config[name] = value
    stops = cf.stop_sequences(body)
    if stops:
        config["stopSequences"] = stops
    for key, name in (("n", "candidateCount"), ("seed", "seed")):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise cf.invalid(f"`{key}` must be an integer", param=key)
            if key != "n" or value != 1:
                config[name] = value
    fmt, schema = cf.response_format(body)
    if fmt != "text":
        config["responseMimeType"] = "application/json"
        if schema is not None:
            config["responseJsonSchema"] = schema
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in _THINKING_BUDGET:
            raise cf.invalid(
                f"`reasoning_effort` must be one of {sorted(_THINKING_BUDGET)}",
                param="reasoning_effort",
            )
        config["thinkingConfig"] = {"thinkingBudget": _THINKING_BUDGET[effort]}
    return config


def generate_content_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion request as a Gemini GenerateContentRequest."""
    cf.check_parameters(KIND, body, _TRANSLATED)
    system, contents = translate_messages(cf.messages_of(body))
    out: dict[str, Any] = {"contents": contents}
    if system is not None:
        out["systemInstruction"] = system
    tools = _tools(body)
    if tools:
        out["tools"] = tools
    tool_config = _tool_config(body, bool(tools))
    if tool_config is not None:
        out["toolConfig"] = tool_config
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    return out


# --- responses ---


def _candidate_parts(candidate: Mapping[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content") or {}
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts or [] if isinstance(p, dict)]


def response_to_completion(response: Mapping[str, Any], model: str | None = None) -> ChatResult:
    """A GenerateContentResponse as an OpenAI chat.completion."""
    usage = usage_from(response.get("usageMetadata") or {})
    choices = []
    for position, candidate in enumerate(response.get("candidates") or []):
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for part in _candidate_parts(candidate):
            if "functionCall" in part:
                call = part["functionCall"]
                calls.append(
                    cf.tool_call(
                        encode_call_id(part.get("thoughtSignature")),
                        str(call.get("name")),
                        call.get("args") or {},
                    )
                )
            elif isinstance(part.get("text"), str):
                (thoughts if part.get("thought") else texts).append(part["text"])
        choices.append(
            cf.choice(
                int(candidate.get("index", position)),
                text="".join(texts) if texts or not calls else None,
                tool_calls=calls,
                finish_reason=finish_reason(candidate.get("finishReason"), bool(calls)) or "stop",
                reasoning="".join(thoughts) or None,
            )
        )
    if not choices:
        # No candidates: the prompt itself was blocked (promptFeedback.blockReason).
        choices.append(cf.choice(0, text="", tool_calls=[], finish_reason="content_filter"))
    finish = choices[0]["finish_reason"]
    completion = cf.completion(
        completion_id=f"chatcmpl-{response.get('responseId') or uuid.uuid4().hex}",
        model=model or str(response.get("modelVersion") or ""),
        choices=choices,
        usage=usage,
    )
    return ChatResult(response=completion, usage=usage, finish_reason=finish)


def error_from(status: int, body: bytes) -> UpstreamError:
    payload: Any = json_object(body)
    if payload is None:
        # The non-SSE streaming endpoint wraps errors in a JSON array.
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and parsed and isinstance(parsed[0], dict):
            payload = parsed[0]
    error = payload.get("error") if payload else None
    if isinstance(error, dict):
        reasons = {
            detail.get("reason")
            for detail in error.get("details") or []
            if isinstance(detail, dict)
        }
        if "API_KEY_INVALID" in reasons:
            # Gemini answers a bad key with 400; it is the credential that is wrong, so it is
            # reported as 401 for the gateway to disable the credential and fail over.
            return upstream_error(401, str(error.get("message")), "API_KEY_INVALID")
        return upstream_error(
            status,
            str(error.get("message") or "Gemini error"),
            str(error.get("status")) if error.get("status") else None,
        )
    return upstream_error(status, body_excerpt(body), None)


class GeminiStreamTranslator:
    """`streamGenerateContent?alt=sse`: each event is a whole GenerateContentResponse piece.

    Usage rides on the pieces; the last one counts. It is reported only once a candidate
    finished (or the prompt was blocked), so a cut stream is estimated by the gateway.
    """

    def __init__(self, model: str) -> None:
        self.usage: TokenUsage | None = None
        self.error: UpstreamError | None = None
        self._writer = cf.ChunkWriter(model)
        self._decoder = SSEDecoder()
        self._meta: dict[str, Any] | None = None
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}  # choice index -> tool calls so far
        self._finished = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for event in self._decoder.feed(data):
            self._piece(event.data, chunks)
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for event in self._decoder.flush():
            self._piece(event.data, chunks)
        if self.usage is not None:
            chunks.append(self._writer.usage(self.usage))
        return chunks

    def _piece(self, data: bytes, chunks: list[dict[str, Any]]) -> None:
        try:
            piece = json.loads(data)
        except ValueError:
            self.error = upstream_error(502, "Gemini sent a malformed stream event", None)
            return
        if not isinstance(piece, dict):
            return
        if isinstance(piece.get("error"), dict):
            error = piece["error"]
            self.error = upstream_error(
                int(error.get("code") or 500),
                str(error.get("message") or "Gemini error"),
                str(error.get("status")) if error.get("status") else None,
            )
            return
        if isinstance(piece.get("usageMetadata"), dict):
            self._meta = piece["usageMetadata"]
        candidates = piece.get("candidates") or []
        feedback = piece.get("promptFeedback") or {}
        if not candidates and feedback.get("blockReason"):
            self._start(0, chunks)
            chunks.append(self._writer.delta({}, finish_reason="content_filter"))
            self._finished = True
        for position, candidate in enumerate(candidates):
            self._candidate(int(candidate.get("index", position)), candidate, chunks)
        if self._finished and self._meta is not None:
            self.usage = usage_from(self._meta)

    def _start(self, index: int, chunks: list[dict[str, Any]]) -> None:
        if index not in self._started:
            self._started.add(index)
            chunks.append(self._writer.delta({"role": "assistant", "content": ""}, index=index))

    def _candidate(
        self, index: int, candidate: Mapping[str, Any], chunks: list[dict[str, Any]]
    ) -> None:
        self._start(index, chunks)
        for part in _candidate_parts(candidate):
            if "functionCall" in part:
                call = part["functionCall"]
                position = self._calls.get(index, 0)
                self._calls[index] = position + 1
                tool_call = cf.tool_call(
                    encode_call_id(part.get("thoughtSignature")),
                    str(call.get("name")),
                    call.get("args") or {},
                )
                chunks.append(
                    self._writer.delta(
                        {"tool_calls": [{"index": position, **tool_call}]}, index=index
                    )
                )
            elif isinstance(part.get("text"), str) and part["text"]:
                key = "reasoning_content" if part.get("thought") else "content"
                chunks.append(self._writer.delta({key: part["text"]}, index=index))
        finish = finish_reason(candidate.get("finishReason"), bool(self._calls.get(index)))
        if finish is not None:
            chunks.append(self._writer.delta({}, index=index, finish_reason=finish))
            self._finished = True


class GeminiAdapter:
    """The ProviderAdapter for the Gemini API (AI Studio / Generative Language API)."""

    kind = KIND

    def chat_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamRequest:
        payload = generate_content_body(body)
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        return UpstreamRequest(
            method="POST",
            url=f"{_base(cred)}/{_model_path(upstream_model)}:{method}",
            headers=_headers(cred),
            body=json.dumps(payload).encode(),
        )

    def chat_response(self, body: bytes) -> ChatResult:
        response = json_object(body)
        if response is None:
            raise upstream_error(502, "Gemini returned an unreadable response", None)
        return response_to_completion(response)

    def stream_translator(self, model: str) -> GeminiStreamTranslator:
        return GeminiStreamTranslator(model)

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return error_from(status, body)

    def embeddings_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        """One text goes to `embedContent`, several to `batchEmbedContents`."""
        texts = cf.embedding_inputs(KIND, body)
        dimensions = body.get("dimensions")
        model = _model_path(upstream_model)
        requests = []
        for text in texts:
            request: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
            if dimensions is not None:
                request["outputDimensionality"] = dimensions
            requests.append(request)
        if isinstance(body.get("input"), str):
            url, payload = f"{_base(cred)}/{model}:embedContent", requests[0]
        else:
            url = f"{_base(cred)}/{model}:batchEmbedContents"
            payload = {"requests": [{"model": model, **r} for r in requests]}
        return UpstreamRequest(
            method="POST", url=url, headers=_headers(cred), body=json.dumps(payload).encode()
        )

    def embeddings_response(
        self, body: bytes, request_body: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], TokenUsage]:
        """Gemini reports no token counts for embeddings (only a newer `usageMetadata` on some
        responses), so without one the count is estimated from `request_body`'s texts."""
        response = json_object(body)
        if response is None:
            raise upstream_error(502, "Gemini returned an unreadable embeddings response", None)
        items = response.get("embeddings")
        if items is None and isinstance(response.get("embedding"), dict):
            items = [response["embedding"]]
        vectors = [list(item.get("values") or []) for item in items or []]
        meta = response.get("usageMetadata") or {}
        request_body = request_body or {}
        if meta.get("promptTokenCount") is not None:
            tokens = int(meta["promptTokenCount"])
        else:
            raw = request_body.get("input")
            texts = [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else []
            tokens = cf.estimate_tokens(t for t in texts if isinstance(t, str))
        usage = TokenUsage(input_tokens=tokens)
        result = cf.embeddings_list(
            vectors,
            model=str(request_body.get("model") or ""),
            encoding_format=request_body.get("encoding_format"),
            usage=usage,
        )
        return result, usage

    def images_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        raise cf.unsupported(KIND, "image generation through /v1/images/generations")

    def images_response(
        self, body: bytes, request_body: dict[str, Any]
    ) -> tuple[dict[str, Any], TokenUsage]:
        raise cf.unsupported(KIND, "image generation through /v1/images/generations")


# Registered by kind in gateway.providers.ADAPTERS.
PROVIDER_ADAPTERS: dict[str, ProviderAdapter] = {KIND: GeminiAdapter()}
