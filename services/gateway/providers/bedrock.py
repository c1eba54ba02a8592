"""Amazon Bedrock adapter: OpenAI chat completions <-> Converse / ConverseStream.

Requests are signed with SigV4 by botocore's signer (service `bedrock`, the credential's access
key pair and `options["region"]`, default us-east-1); a credential with only an API key uses
Bedrock's bearer API keys instead. ConverseStream answers in the AWS event-stream binary framing
(see bedrock_eventstream). Embeddings go through InvokeModel for Amazon Titan text embedding
models, the one family whose response reports its token count.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import yarl
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tally.pricing import TokenUsage

from . import chat_format as cf
from .base import ChatResult, Credential, ProviderAdapter, UpstreamError, UpstreamRequest
from .bedrock_eventstream import EventStreamDecoder, StreamMessage
from .upstream_errors import body_excerpt, json_object, upstream_error

KIND = "bedrock"
SIGNING_NAME = "bedrock"
DEFAULT_REGION = "us-east-1"
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
DOCUMENT_FORMATS = {
    "application/pdf": "pdf",
    "text/csv": "csv",
    "text/plain": "txt",
    "text/html": "html",
    "text/markdown": "md",
    "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
}
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DOCUMENT_NAME_CHARS = re.compile(r"[^A-Za-z0-9\-()\[\] ]+")
_TRANSLATED = frozenset(
    {
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
    }
)

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# HTTP status of each ConverseStream exception event (from the service model's error shapes).
EXCEPTION_STATUS = {
    "validationException": 400,
    "accessDeniedException": 403,
    "resourceNotFoundException": 404,
    "modelTimeoutException": 408,
    "throttlingException": 429,
    "modelNotReadyException": 429,
    "modelStreamErrorException": 424,
    "modelErrorException": 424,
    "internalServerException": 500,
    "serviceUnavailableException": 503,
}
# A model failing mid-stream says "retry your request"; 424 is not a 5xx, so name it here.
_RETRYABLE_CODES = frozenset({"ModelStreamErrorException", "ModelNotReadyException"})


def usage_from(usage: Mapping[str, Any]) -> TokenUsage:
    """Converse usage: `inputTokens` excludes cache reads and writes (like Anthropic's)."""
    return TokenUsage(
        input_tokens=int(usage.get("inputTokens") or 0),
        cached_input_tokens=int(usage.get("cacheReadInputTokens") or 0),
        cache_write_tokens=int(usage.get("cacheWriteInputTokens") or 0),
        output_tokens=int(usage.get("outputTokens") or 0),
    )


def _region(cred: Credential) -> str:
    return str(cred.options.get("region") or DEFAULT_REGION)


def _endpoint(cred: Credential) -> str:
    return (cred.base_url or f"https://bedrock-runtime.{_region(cred)}.amazonaws.com").rstrip("/")


def _model_url(cred: Credential, model_id: str, operation: str) -> str:
    # Model ids hold ':' and ARNs '/'. The URL is normalised by yarl, as gateway.http_client
    # sends it, before signing: the path AWS canonicalises is the path that was signed.
    url = f"{_endpoint(cred)}/model/{quote(model_id, safe='')}/{operation}"
    return str(yarl.URL(url))


def signed_request(cred: Credential, url: str, payload: bytes, accept: str) -> UpstreamRequest:
    """A POST signed with SigV4 (or carrying a Bedrock API key as a bearer token)."""
    headers = {"content-type": "application/json", "accept": accept}
    if cred.access_key_id and cred.secret_access_key:
        request = AWSRequest(method="POST", url=url, data=payload, headers=headers)
        credentials = Credentials(
            cred.access_key_id, cred.secret_access_key, cred.options.get("session_token")
        )
        SigV4Auth(credentials, SIGNING_NAME, _region(cred)).add_auth(request)
        headers = {name: str(value) for name, value in request.headers.items()}
    elif cred.api_key:
        headers["authorization"] = f"Bearer {cred.api_key}"
    else:
        raise cf.invalid("the Bedrock credential needs an access key pair or an API key")
    return UpstreamRequest(method="POST", url=url, headers=headers, body=payload)


# --- requests ---


def _image_block(url: str, where: str) -> dict[str, Any]:
    data = cf.parse_data_url(url, where)
    if data is not None:
        image_format = IMAGE_FORMATS.get(data.media_type)
        if image_format is None:
            raise cf.unsupported(KIND, f"images of type {data.media_type}", param="messages")
        return {"image": {"format": image_format, "source": {"bytes": data.data}}}
    if url.startswith("s3://"):
        extension = url.rsplit(".", 1)[-1].lower()
        image_format = {"jpg": "jpeg"}.get(extension, extension)
        if image_format not in IMAGE_FORMATS.values():
            raise cf.unsupported(KIND, f"S3 images without a known extension ({url})")
        return {"image": {"format": image_format, "source": {"s3Location": {"uri": url}}}}
    raise cf.unsupported(
        KIND,
        "image URLs other than s3:// (send the image as a base64 data: URL)",
        param="messages",
    )


def _document_block(part: Mapping[str, Any], where: str, number: int) -> dict[str, Any]:
    data, filename = cf.file_data_of(KIND, part, where)
    doc_format = DOCUMENT_FORMATS.get(data.media_type)
    if doc_format is None:
        raise cf.unsupported(KIND, f"file inputs of type {data.media_type}", param="messages")
    # Bedrock restricts document names to letters, digits, spaces, hyphens and brackets.
    stem = (filename or "").rsplit(".", 1)[0]
    name = " ".join(_DOCUMENT_NAME_CHARS.sub(" ", stem).split())[:200] or f"document {number}"
    return {"document": {"format": doc_format, "name": name, "source": {"bytes": data.data}}}


def _user_blocks(parts: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for number, part in enumerate(parts, 1):
        kind = part["type"]
        if kind == "text":
            text = cf.part_text(part, where)
            if text:
                blocks.append({"text": text})
        elif kind == "image_url":
            blocks.append(_image_block(cf.image_url_of(part, where), where))
        elif kind == "file":
            blocks.append(_document_block(part, where, number))
        elif kind == "input_audio":
            raise cf.unsupported(KIND, "audio input", param="messages")
        else:
            raise cf.unsupported(KIND, f"content parts of type {kind!r}", param="messages")
        if isinstance(part.get("cache_control"), dict):
            blocks.append({"cachePoint": {"type": "default"}})  # prompt caching up to here
    return blocks


def _assistant_blocks(message: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [
        {"text": text} for text in cf.assistant_texts(KIND, message, where)
    ]
    for call in message.get("tool_calls") or []:
        call_id, name, arguments = cf.tool_call_arguments(call, where)
        blocks.append({"toolUse": {"toolUseId": call_id, "name": name, "input": arguments}})
    return blocks


def _tool_result(message: Mapping[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise cf.invalid(f"{where}: a tool message needs `tool_call_id`", param="messages")
    content = _user_blocks(cf.content_parts(message.get("content"), where), where)
    content = [b for b in content if "text" in b or "image" in b] or [{"text": ""}]
    return {"toolResult": {"toolUseId": call_id, "content": content, "status": "success"}}


def _append(messages: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if messages and messages[-1]["role"] == role:
        messages[-1]["content"].extend(blocks)
    else:
        messages.append({"role": role, "content": list(blocks)})
    if role == "user":
        messages[-1]["content"].sort(key=lambda block: "toolResult" not in block)


def translate_messages(
    openai_messages: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, messages) in Converse's shape."""
    system, turns = cf.translate_turns(
        KIND,
        openai_messages,
        parts=_user_blocks,
        assistant=_assistant_blocks,
        tool=_tool_result,
    )
    messages: list[dict[str, Any]] = []
    for role, blocks in turns:
        _append(messages, role, blocks)
    return system, messages


def _tool_config(body: Mapping[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    specs = []
    for tool in cf.function_tools(KIND, body):
        if not _TOOL_NAME.match(tool.name):
            raise cf.unsupported(
                KIND,
                f"the tool name {tool.name!r} (allowed: letters, digits, _ and -, 1-64)",
                param="tools",
            )
        if tool.strict:
            raise cf.unsupported(KIND, "strict function schemas (`strict: true`)", param="tools")
        spec: dict[str, Any] = {"name": tool.name, "inputSchema": {"json": tool.parameters}}
        if tool.description:
            spec["description"] = tool.description
        specs.append({"toolSpec": spec})
    choice = cf.tool_choice(body)
    mode, name = choice if choice is not None else ("auto", None)
    if not specs:
        if mode in ("auto", "none"):
            return None
        raise cf.invalid("`tool_choice` requires `tools`", param="tool_choice")
    if mode == "none":
        # Converse has no "none" choice; leaving the tools out is the same unless the history
        # holds tool blocks, which Converse only accepts with a toolConfig.
        history_has_tools = any(
            "toolUse" in block or "toolResult" in block
            for message in messages
            for block in message["content"]
        )
        if history_has_tools:
            raise cf.unsupported(
                KIND,
                '`tool_choice: "none"` in a conversation with tool calls',
                param="tool_choice",
            )
        return None
    config: dict[str, Any] = {"tools": specs}
    if choice is not None:
        config["toolChoice"] = (
            {"auto": {}}
            if mode == "auto"
            else {"any": {}}
            if mode == "required"
            else {"tool": {"name": name}}
        )
    return config


def converse_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """An OpenAI chat completion request as a Converse request body."""
    cf.check_parameters(KIND, body, _TRANSLATED)
    system, messages = translate_messages(cf.messages_of(body))
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    inference: dict[str, Any] = {}
    cap = cf.max_output_tokens(body)
    if cap is not None:
        inference["maxTokens"] = cap
    for key, name in (("temperature", "temperature"), ("top_p", "topP")):
        value = cf.number(body, key)
        if value is not None:
            inference[name] = value
    stops = cf.stop_sequences(body)
    if stops:
        inference["stopSequences"] = stops
    if inference:
        out["inferenceConfig"] = inference
    tool_config = _tool_config(body, messages)
    if tool_config is not None:
        out["toolConfig"] = tool_config
    return out


# --- responses ---


def converse_to_completion(response: Mapping[str, Any], model: str | None = None) -> ChatResult:
    """A Converse response as an OpenAI chat.completion."""
    message = (response.get("output") or {}).get("message") or {}
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.get("content") or []:
        if "text" in block:
            texts.append(str(block["text"]))
        elif "toolUse" in block:
            use = block["toolUse"]
            calls.append(
                cf.tool_call(str(use["toolUseId"]), str(use["name"]), use.get("input") or {})
            )
        elif "reasoningContent" in block:
            text = ((block["reasoningContent"] or {}).get("reasoningText") or {}).get("text")
            if text:
                reasoning.append(str(text))
    finish = FINISH_REASONS.get(str(response.get("stopReason")), "stop")
    usage = usage_from(response.get("usage") or {})
    completion = cf.completion(
        completion_id=cf.new_completion_id(),
        model=model or "",
        choices=[
            cf.choice(
                0,
                text="".join(texts) if texts or not calls else None,
                tool_calls=calls,
                finish_reason=finish,
                reasoning="".join(reasoning) or None,
            )
        ],
        usage=usage,
    )
    return ChatResult(response=completion, usage=usage, finish_reason=finish)


def error_from(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    """The error type is in `x-amzn-ErrorType` ("ThrottlingException:http://..."), the text
    in the body's `message` (or `Message`)."""
    error_type = None
    for name, value in headers.items():
        if name.lower() == "x-amzn-errortype":
            error_type = value.split(":", 1)[0] or None
    payload = json_object(body) or {}
    message = payload.get("message") or payload.get("Message")
    if error_type is None and isinstance(payload.get("__type"), str):
        error_type = payload["__type"].rsplit("#", 1)[-1]
    error = upstream_error(status, str(message) if message else body_excerpt(body), error_type)
    if error_type in _RETRYABLE_CODES:
        error.retryable = True
    return error


class BedrockStreamTranslator:
    """ConverseStream event-stream frames -> OpenAI chunks; usage comes last, in `metadata`."""

    def __init__(self, model: str) -> None:
        self.usage: TokenUsage | None = None
        self.error: UpstreamError | None = None
        self._writer = cf.ChunkWriter(model)
        self._decoder = EventStreamDecoder()
        self._tool_index: dict[int, int] = {}
        self._usage_sent = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        for message in self._decoder.feed(data):
            self._message(message, chunks)
        if self._decoder.corrupt is not None and self.error is None:
            self.error = upstream_error(
                502, f"Bedrock sent a corrupt event frame: {self._decoder.corrupt}", None
            )
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        chunks: list[dict[str, Any]] = []
        if self.usage is not None and not self._usage_sent:
            self._usage_sent = True
            chunks.append(self._writer.usage(self.usage))
        return chunks

    def _message(self, message: StreamMessage, chunks: list[dict[str, Any]]) -> None:
        payload = json_object(message.payload) or {}
        if message.message_type != "event":
            code = message.event_type or str(message.headers.get(":error-code") or "error")
            text = payload.get("message") or message.headers.get(":error-message") or code
            status = EXCEPTION_STATUS.get(code, 500)
            self.error = upstream_error(status, str(text), code[:1].upper() + code[1:])
            if code in ("modelStreamErrorException", "modelNotReadyException"):
                self.error.retryable = True
            return
        event = message.event_type
        if event == "messageStart":
            chunks.append(self._writer.delta({"role": "assistant", "content": ""}))
        elif event == "contentBlockStart":
            use = (payload.get("start") or {}).get("toolUse")
            if isinstance(use, dict):
                block = int(payload.get("contentBlockIndex") or 0)
                index = self._tool_index.setdefault(block, len(self._tool_index))
                call = {"index": index, **cf.tool_call(use["toolUseId"], use["name"], "")}
                chunks.append(self._writer.delta({"tool_calls": [call]}))
        elif event == "contentBlockDelta":
            self._delta(payload, chunks)
        elif event == "messageStop":
            finish = FINISH_REASONS.get(str(payload.get("stopReason")), "stop")
            chunks.append(self._writer.delta({}, finish_reason=finish))
        elif event == "metadata":
            self.usage = usage_from(payload.get("usage") or {})
            self._usage_sent = True
            chunks.append(self._writer.usage(self.usage))

    def _delta(self, payload: Mapping[str, Any], chunks: list[dict[str, Any]]) -> None:
        delta = payload.get("delta") or {}
        if isinstance(delta.get("text"), str) and delta["text"]:
            chunks.append(self._writer.delta({"content": delta["text"]}))
        elif isinstance(delta.get("toolUse"), dict):
            index = self._tool_index.get(int(payload.get("contentBlockIndex") or 0))
            fragment = delta["toolUse"].get("input")
            if index is not None and fragment:
                call = {"index": index, "function": {"arguments": fragment}}
                chunks.append(self._writer.delta({"tool_calls": [call]}))
        elif isinstance(delta.get("reasoningContent"), dict):
            text = delta["reasoningContent"].get("text")
            if text:
                chunks.append(self._writer.delta({"reasoning_content": text}))


class BedrockAdapter:
    """The ProviderAdapter for Bedrock's Converse API."""

    kind = KIND

    def chat_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any], *, stream: bool
    ) -> UpstreamRequest:
        payload = json.dumps(converse_body(body)).encode()
        if stream:
            url = _model_url(cred, upstream_model, "converse-stream")
            return signed_request(cred, url, payload, "application/vnd.amazon.eventstream")
        return signed_request(
            cred, _model_url(cred, upstream_model, "converse"), payload, "application/json"
        )

    def chat_response(self, body: bytes) -> ChatResult:
        response = json_object(body)
        if response is None or "output" not in response:
            raise upstream_error(502, "Bedrock returned an unreadable Converse response", None)
        return converse_to_completion(response)

    def stream_translator(self, model: str) -> BedrockStreamTranslator:
        return BedrockStreamTranslator(model)

    def error(self, status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
        return error_from(status, headers, body)

    def embeddings_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        """Amazon Titan text embeddings through InvokeModel: one text per call."""
        texts = cf.embedding_inputs(KIND, body)
        if "titan-embed" not in upstream_model:
            raise cf.unsupported(KIND, f"embeddings with {upstream_model} (only Amazon Titan)")
        if len(texts) != 1:
            raise cf.unsupported(KIND, "several embedding inputs in one request (Titan takes one)")
        payload: dict[str, Any] = {"inputText": texts[0]}
        if body.get("dimensions") is not None:
            payload["dimensions"] = body["dimensions"]
        url = _model_url(cred, upstream_model, "invoke")
        return signed_request(cred, url, json.dumps(payload).encode(), "application/json")

    def embeddings_response(
        self, body: bytes, request_body: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], TokenUsage]:
        response = json_object(body)
        if response is None or not isinstance(response.get("embedding"), list):
            raise upstream_error(502, "Bedrock returned an unreadable embeddings response", None)
        usage = TokenUsage(input_tokens=int(response.get("inputTextTokenCount") or 0))
        request_body = request_body or {}
        result = cf.embeddings_list(
            [list(response["embedding"])],
            model=str(request_body.get("model") or ""),
            encoding_format=request_body.get("encoding_format"),
            usage=usage,
        )
        return result, usage

    def images_request(
        self, cred: Credential, upstream_model: str, body: dict[str, Any]
    ) -> UpstreamRequest:
        raise cf.unsupported(KIND, "image generation")

    def images_response(
        self, body: bytes, request_body: dict[str, Any]
    ) -> tuple[dict[str, Any], TokenUsage]:
        raise cf.unsupported(KIND, "image generation")


# Registered by kind in gateway.providers.ADAPTERS.
PROVIDER_ADAPTERS: dict[str, ProviderAdapter] = {KIND: BedrockAdapter()}
