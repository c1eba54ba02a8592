"""A fake Gemini API (`/v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`,
`:embedContent`, `:batchEmbedContents`).

Built from the Gemini API reference examples: GenerateContentResponse with candidates,
finishReason, usageMetadata (promptTokenCount including cachedContentTokenCount,
thoughtsTokenCount beside candidatesTokenCount), promptFeedback.blockReason for a blocked
prompt, SSE pieces (`data: {...}` separated by CRLF CRLF, no event names, no [DONE]), and the
error shape `{"error":{"code","message","status","details"}}` (an invalid key is a 400 with
reason API_KEY_INVALID). Requests are checked like the API does: key, unknown fields, roles
user/model, one data field per part, function responses answering the previous turn's calls
one for one, and (for gemini-3 models) thought signatures returned with function calls.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from typing import Any

from aiohttp import web

from tests.fakes.upstream import FakeUpstream, ProviderError, Reply, split_words

TOP_LEVEL = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
             "safetySettings", "cachedContent"}  # fmt: skip
GENERATION_CONFIG = {
    "maxOutputTokens", "temperature", "topP", "topK", "stopSequences", "candidateCount", "seed",
    "presencePenalty", "frequencyPenalty", "responseMimeType", "responseJsonSchema",
    "responseSchema", "thinkingConfig", "responseLogprobs", "logprobs",
}  # fmt: skip
PART_DATA = {"text", "inlineData", "fileData", "functionCall", "functionResponse"}
STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip


def embedding_for(text: str, dimensions: int) -> list[float]:
    """A deterministic vector of values exact in float32 (multiples of 1/8)."""
    return [((len(text) + i * 3) % 16 - 8) / 8 for i in range(dimensions)]


class FakeGemini(FakeUpstream):
    def __init__(self, api_key: str = "test-key") -> None:
        super().__init__(api_key)
        self.issued_signatures: set[str] = set()

    def base_path(self) -> str:
        return "/v1beta"

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1beta/models/{target}", self.dispatch)]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        try:
            key = request.headers.get("x-goog-api-key") or request.query.get("key")
            if key != self.api_key:
                raise ProviderError(
                    400, "API_KEY_INVALID", "API key not valid. Please pass a valid API key."
                )
            try:
                body = json.loads(await request.read())
            except ValueError:
                raise ProviderError(400, "", "Invalid JSON payload received.") from None
            if method in ("embedContent", "batchEmbedContents"):
                reply = self.next_reply()
                if reply.error is not None:
                    raise ProviderError(*reply.error)
                return web.json_response(self._embed(model, method, body, reply))
            if method == "streamGenerateContent" and request.query.get("alt") != "sse":
                raise ProviderError(400, "", "this fake only streams with alt=sse")
            if method not in ("generateContent", "streamGenerateContent"):
                raise ProviderError(404, "", f"method {method} not found")
            self._validate(model, body)
            reply = self.next_reply()
            if reply.error is not None:
                raise ProviderError(*reply.error)
        except ProviderError as exc:
            return web.json_response(error_body(exc), status=exc.status)
        if method == "streamGenerateContent":
            return await self._stream(request, model, body, reply)
        return web.json_response(self._response(model, reply))

    # --- rendering ---

    def _usage(self, reply: Reply, *, final: bool = True) -> dict[str, Any]:
        usage: dict[str, Any] = {"promptTokenCount": 20, "candidatesTokenCount": 10}
        usage.update(reply.usage)
        if not final:
            usage["candidatesTokenCount"] = 1
            usage.pop("thoughtsTokenCount", None)
        usage["totalTokenCount"] = (
            usage["promptTokenCount"]
            + usage.get("candidatesTokenCount", 0)
            + usage.get("thoughtsTokenCount", 0)
            + usage.get("toolUsePromptTokenCount", 0)
        )
        usage["promptTokensDetails"] = [
            {"modality": "TEXT", "tokenCount": usage["promptTokenCount"]}
        ]
        return usage

    def _parts(self, reply: Reply) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if reply.thinking:
            parts.append({"text": reply.thinking, "thought": True})
        if reply.text:
            parts.append({"text": reply.text})
        for i, call in enumerate(reply.tool_calls):
            part: dict[str, Any] = {"functionCall": {"name": call.name, "args": call.arguments}}
            if i == 0:  # only the first call of a turn carries the signature
                signature = base64.b64encode(uuid.uuid4().bytes).decode()
                self.issued_signatures.add(signature)
                part["thoughtSignature"] = signature
            parts.append(part)
        return parts

    def _response(self, model: str, reply: Reply) -> dict[str, Any]:
        response: dict[str, Any] = {
            "usageMetadata": self._usage(reply),
            "modelVersion": model,
            "responseId": uuid.uuid4().hex[:22],
        }
        if reply.blocked:
            response["promptFeedback"] = {"blockReason": reply.blocked}
            response["usageMetadata"].pop("candidatesTokenCount", None)
            return response
        response["candidates"] = [
            {
                "content": {"parts": self._parts(reply), "role": "model"},
                "finishReason": reply.stop_reason or "STOP",
                "index": index,
            }
            for index in range(reply.candidates)
        ]
        return response

    async def _stream(
        self, request: web.Request, model: str, body: dict[str, Any], reply: Reply
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)

        async def send(piece: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(piece)}\r\n\r\n".encode())

        if reply.blocked:
            await send(self._response(model, reply))
            await response.write_eof()
            return response
        pieces: list[list[dict[str, Any]]] = []
        if reply.thinking:
            pieces.append([{"text": reply.thinking, "thought": True}])
        pieces.extend([{"text": word}] for word in split_words(reply.text))
        calls = self._parts(Reply(text="", tool_calls=reply.tool_calls))
        if calls:
            pieces.append(calls)
        pieces = pieces or [[{"text": ""}]]
        for n, parts in enumerate(pieces):
            last = n == len(pieces) - 1
            candidates = []
            for index in range(reply.candidates):
                candidate: dict[str, Any] = {
                    "content": {"parts": parts, "role": "model"},
                    "index": index,
                }
                if last:
                    candidate["finishReason"] = reply.stop_reason or "STOP"
                candidates.append(candidate)
            await send(
                {
                    "candidates": candidates,
                    "usageMetadata": self._usage(reply, final=last),
                    "modelVersion": model,
                    "responseId": "stream-1",
                }
            )
            if reply.stream_error is not None:
                status, text = reply.stream_error
                await send({"error": {"code": 503, "message": text, "status": status}})
                break
        await response.write_eof()
        return response

    def _embed(self, model: str, method: str, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        def one(request: dict[str, Any]) -> dict[str, Any]:
            parts = (request.get("content") or {}).get("parts") or []
            if not parts or not all(isinstance(p.get("text"), str) for p in parts):
                raise ProviderError(400, "", "content.parts must hold text")
            text = "".join(p["text"] for p in parts)
            return {"values": embedding_for(text, int(request.get("outputDimensionality") or 8))}

        if method == "embedContent":
            result: dict[str, Any] = {"embedding": one(body)}
        else:
            requests = body.get("requests")
            if not isinstance(requests, list) or not requests:
                raise ProviderError(400, "", "requests is required")
            for r in requests:
                if r.get("model") != f"models/{model}":
                    raise ProviderError(400, "", "model of each request must match the URL")
            result = {"embeddings": [one(r) for r in requests]}
        if reply.embedding_usage is not None:
            result["usageMetadata"] = {"promptTokenCount": reply.embedding_usage}
        return result

    # --- validation ---

    def _validate(self, model: str, body: Any) -> None:
        if not isinstance(body, dict):
            raise _bad("body must be an object")
        for key in body:
            if key not in TOP_LEVEL:
                raise _bad(
                    f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.'
                )
        for key in body.get("generationConfig") or {}:
            if key not in GENERATION_CONFIG:
                raise _bad(f"Unknown name \"{key}\" at 'generation_config': Cannot find field.")
        declared = set()
        for tool in body.get("tools") or []:
            for declaration in tool.get("functionDeclarations") or []:
                if "parameters" in declaration and "parametersJsonSchema" in declaration:
                    raise _bad("parameters and parametersJsonSchema are mutually exclusive")
                declared.add(declaration["name"])
        mode = ((body.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
        if mode is not None and mode not in ("AUTO", "ANY", "NONE", "VALIDATED"):
            raise _bad(f"invalid function calling mode {mode}")
        for part in (body.get("systemInstruction") or {}).get("parts") or []:
            if set(part) != {"text"}:
                raise _bad("systemInstruction parts must be text")
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            raise _bad("contents is not specified")
        previous_calls: list[str] = []
        for i, content in enumerate(contents):
            role = content.get("role")
            if role not in ("user", "model"):
                raise _bad(f"contents[{i}].role must be user or model")
            parts = content.get("parts")
            if not parts:
                raise _bad(f"contents[{i}].parts must not be empty")
            calls, responses = [], []
            for j, part in enumerate(parts):
                data = PART_DATA.intersection(part)
                if len(data) != 1:
                    raise _bad(f"contents[{i}].parts[{j}] must have exactly one data field")
                if "inlineData" in part:
                    inline = part["inlineData"]
                    try:
                        base64.b64decode(inline.get("data") or "", validate=True)
                    except (binascii.Error, ValueError):
                        raise _bad(
                            f"contents[{i}].parts[{j}].inlineData.data: invalid base64"
                        ) from None
                    if not inline.get("mimeType"):
                        raise _bad(f"contents[{i}].parts[{j}].inlineData.mimeType is required")
                if "functionCall" in part:
                    if role != "model":
                        raise _bad("functionCall parts only in model turns")
                    calls.append(part)
                if "functionResponse" in part:
                    response = part["functionResponse"]
                    if not isinstance(response.get("response"), dict):
                        raise _bad("functionResponse.response must be an object")
                    responses.append(response["name"])
            if responses:
                if sorted(responses) != sorted(previous_calls):
                    raise _bad(
                        "Please ensure that the number of function response parts is equal to "
                        "the number of function call parts of the function call turn."
                    )
            if calls and model.startswith("gemini-3"):
                signature = calls[0].get("thoughtSignature")
                if signature not in self.issued_signatures:
                    raise _bad(
                        "Function call is missing a thought_signature in functionCall parts."
                    )
            previous_calls = [c["functionCall"]["name"] for c in calls]


def _bad(message: str) -> ProviderError:
    return ProviderError(400, "", message)


def error_body(exc: ProviderError) -> dict[str, Any]:
    error: dict[str, Any] = {
        "code": exc.status,
        "message": exc.message,
        "status": STATUS_NAMES.get(exc.status, "INTERNAL"),
    }
    if exc.error_type == "API_KEY_INVALID":
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
            }
        ]
    elif exc.error_type and exc.error_type.isupper():
        error["status"] = exc.error_type
    return {"error": error}
