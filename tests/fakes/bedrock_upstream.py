"""A fake Amazon Bedrock runtime (`/model/{modelId}/converse`, `/converse-stream`, `/invoke`).

Built from the bedrock-runtime service model and AWS's published Converse examples: the
Converse response (output.message, stopReason, usage with cacheRead/WriteInputTokens,
metrics), ConverseStream's events in the binary event-stream framing (written here from the
format's definition with its own CRC32s, independent of botocore's decoder), exception frames,
HTTP errors with `x-amzn-ErrorType`, and Titan embeddings through InvokeModel.

Every request's SigV4 signature is verified from scratch (canonical request, string to sign,
signing key) against the path as it arrived on the wire, so a URL the client re-encoded after
signing fails here as it would at AWS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
import uuid
import zlib
from typing import Any
from urllib.parse import quote

from aiohttp import web

from tests.fakes.upstream import FakeUpstream, ProviderError, Reply, split_json, split_words

AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})$"
)
ROLES = ("user", "assistant")
CONTENT_KEYS = {
    "text",
    "image",
    "document",
    "toolUse",
    "toolResult",
    "cachePoint",
    "reasoningContent",
}


# --- the event-stream framing, written from the format's definition ---


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        struct.pack(">B", len(raw_name)) + raw_name + b"\x07" + struct.pack(">H", len(raw_value))
        + raw_value
    )  # fmt: skip


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One message: prelude (total, headers length, CRC), string headers, payload, CRC."""
    header_bytes = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(header_bytes) + len(payload) + 4
    prelude = struct.pack(">II", total, len(header_bytes))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + header_bytes + payload
    return message + struct.pack(">I", zlib.crc32(message) & 0xFFFFFFFF)


def event_frame(event_type: str, payload: dict[str, Any]) -> bytes:
    # Bedrock pads payloads with a random-length "p" field so sizes leak nothing.
    body = json.dumps({**payload, "p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ"[: len(event_type)]})
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return frame(headers, body.encode())


def exception_frame(exception_type: str, message: str) -> bytes:
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return frame(headers, json.dumps({"message": message}).encode())


# --- SigV4, independently ---


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def expected_signature(
    secret: str, method: str, raw_path: str, raw_query: str, headers: dict[str, str],
    signed: list[str], body: bytes, amz_date: str, region: str, service: str,
) -> str:  # fmt: skip
    # Non-S3 services encode each (already encoded) path segment once more.
    canonical_uri = "/".join(quote(segment, safe="-_.~") for segment in raw_path.split("/"))
    query = "&".join(sorted(raw_query.split("&"))) if raw_query else ""
    canonical_headers = "".join(f"{h}:{' '.join(headers[h].split())}\n" for h in signed)
    canonical = "\n".join(
        [method, canonical_uri, query, canonical_headers, ";".join(signed),
         hashlib.sha256(body).hexdigest()]
    )  # fmt: skip
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(f"AWS4{secret}".encode(), amz_date[:8])
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


class FakeBedrock(FakeUpstream):
    def __init__(
        self,
        access_key_id: str = "AKIAFAKEEXAMPLE",
        secret_access_key: str = "fake/secret/EXAMPLEKEY",
        region: str = "us-east-1",
    ) -> None:
        super().__init__("unused")
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.region = region

    def routes(self) -> list[web.RouteDef]:
        return [web.post("/model/{model_id}/{operation}", self.dispatch)]

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        operation = request.match_info["operation"]
        model_id = request.match_info["model_id"]
        try:
            body_bytes = await request.read()
            self._verify_signature(request, body_bytes)
            try:
                body = json.loads(body_bytes)
            except ValueError:
                raise ProviderError(400, "SerializationException", "invalid JSON") from None
            if operation == "invoke":
                return web.json_response(self._invoke(model_id, body))
            if operation not in ("converse", "converse-stream"):
                raise ProviderError(404, "UnknownOperationException", operation)
            validate(body)
            reply = self.next_reply()
            if reply.error is not None:
                raise ProviderError(*reply.error)
        except ProviderError as exc:
            return web.json_response(
                {"message": exc.message},
                status=exc.status,
                headers={
                    "x-amzn-ErrorType": f"{exc.error_type}:http://internal.amazon.com/coral/com.amazon.bedrock/",
                    "x-amzn-RequestId": str(uuid.uuid4()),
                },
            )
        if operation == "converse-stream":
            return await self._stream(request, reply)
        return web.json_response(self._converse(reply))

    def _verify_signature(self, request: web.Request, body: bytes) -> None:
        match = AUTH.match(request.headers.get("Authorization", ""))
        if match is None:
            raise ProviderError(
                403, "MissingAuthenticationTokenException", "Missing Authentication Token"
            )
        if match["key"] != self.access_key_id:
            raise ProviderError(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        amz_date = request.headers.get("X-Amz-Date", "")
        signed = match["signed"].split(";")
        if (
            match["region"] != self.region
            or match["service"] != "bedrock"
            or amz_date[:8] != match["date"]
            or "host" not in signed
            or "x-amz-date" not in signed
        ):
            raise ProviderError(
                403, "InvalidSignatureException", "Credential should be scoped correctly."
            )
        headers = {name.lower(): value for name, value in request.headers.items()}
        raw_path, _, raw_query = request.raw_path.partition("?")
        expected = expected_signature(
            self.secret_access_key, request.method, raw_path, raw_query, headers, signed,
            body, amz_date, self.region, "bedrock",
        )  # fmt: skip
        if not hmac.compare_digest(expected, match["signature"]):
            raise ProviderError(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )

    # --- rendering ---

    def _usage(self, reply: Reply) -> dict[str, Any]:
        usage: dict[str, Any] = {"inputTokens": 30, "outputTokens": 15}
        usage.update(reply.usage)
        usage["totalTokens"] = sum(
            usage.get(k, 0)
            for k in (
                "inputTokens",
                "outputTokens",
                "cacheReadInputTokens",
                "cacheWriteInputTokens",
            )
        )
        return usage

    def _stop(self, reply: Reply) -> str:
        return reply.stop_reason or ("tool_use" if reply.tool_calls else "end_turn")

    def _converse(self, reply: Reply) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if reply.thinking:
            content.append(
                {
                    "reasoningContent": {
                        "reasoningText": {"text": reply.thinking, "signature": "sig"}
                    }
                }
            )
        if reply.text:
            content.append({"text": reply.text})
        for call in reply.tool_calls:
            content.append(
                {"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.arguments}}
            )
        return {
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": self._stop(reply),
            "usage": self._usage(reply),
            "metrics": {"latencyMs": 412},
        }

    async def _stream(self, request: web.Request, reply: Reply) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"content-type": "application/vnd.amazon.eventstream"}
        )
        await response.prepare(request)
        frames = [event_frame("messageStart", {"role": "assistant"})]
        index = 0
        if reply.thinking:
            frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": index,
                          "delta": {"reasoningContent": {"text": reply.thinking}}}))  # fmt: skip
            frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        if reply.text:
            for n, word in enumerate(split_words(reply.text)):
                frames.append(
                    event_frame(
                        "contentBlockDelta", {"contentBlockIndex": index, "delta": {"text": word}}
                    )
                )
                if n == 0 and reply.stream_error is not None:
                    frames.append(exception_frame(*reply.stream_error))
                    for chunk in frames:
                        await response.write(chunk)
                    await response.write_eof()
                    return response
            frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        for call in reply.tool_calls:
            start = {"toolUse": {"toolUseId": call.id, "name": call.name}}
            frames.append(
                event_frame("contentBlockStart", {"contentBlockIndex": index, "start": start})
            )
            for fragment in split_json(call.arguments):
                frames.append(event_frame("contentBlockDelta", {"contentBlockIndex": index,
                              "delta": {"toolUse": {"input": fragment}}}))  # fmt: skip
            frames.append(event_frame("contentBlockStop", {"contentBlockIndex": index}))
            index += 1
        frames.append(event_frame("messageStop", {"stopReason": self._stop(reply)}))
        frames.append(
            event_frame("metadata", {"usage": self._usage(reply), "metrics": {"latencyMs": 388}})
        )
        for chunk in frames:
            await response.write(chunk)
        await response.write_eof()
        return response

    def _invoke(self, model_id: str, body: dict[str, Any]) -> dict[str, Any]:
        if "titan-embed" not in model_id:
            raise ProviderError(400, "ValidationException", "this fake only embeds with Titan")
        text = body.get("inputText")
        if not isinstance(text, str) or set(body) - {
            "inputText",
            "dimensions",
            "normalize",
            "embeddingTypes",
        }:
            raise ProviderError(400, "ValidationException", "Malformed input request")
        dimensions = int(body.get("dimensions") or 8)
        self.next_reply()
        return {
            "embedding": [((len(text) + i) % 8 - 4) / 4 for i in range(dimensions)],
            "inputTextTokenCount": len(text.split()),
        }


def _bad(message: str) -> ProviderError:
    return ProviderError(400, "ValidationException", message)


def validate(body: Any) -> None:
    """The checks Converse makes before invoking the model."""
    allowed = {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
               "additionalModelRequestFields", "promptVariables", "requestMetadata",
               "performanceConfig"}  # fmt: skip
    for key in body:
        if key not in allowed:
            raise _bad(f'Unknown parameter in input: "{key}"')
    for key in body.get("inferenceConfig") or {}:
        if key not in ("maxTokens", "temperature", "topP", "stopSequences"):
            raise _bad(f'Unknown parameter in inferenceConfig: "{key}"')
    for block in body.get("system") or []:
        if not ({"text"} == set(block) or {"cachePoint"} == set(block)):
            raise _bad("system blocks must be text or cachePoint")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must not be empty")
    if messages[0].get("role") != "user":
        raise _bad("A conversation must start with a user message.")
    uses_tools = False
    previous_uses: set[str] = set()
    for i, message in enumerate(messages):
        if message.get("role") not in ROLES:
            raise _bad(f"messages.{i}.role must be user or assistant")
        if i and message["role"] == messages[i - 1]["role"]:
            raise _bad("A conversation must alternate between user and assistant roles.")
        content = message.get("content")
        if not content:
            raise _bad(f"messages.{i}.content must not be empty")
        uses = set()
        for block in content:
            keys = set(block)
            if len(keys) != 1 or not keys <= CONTENT_KEYS:
                raise _bad(f"messages.{i}: each content block holds exactly one member")
            if "text" in block and not block["text"].strip():
                raise _bad("The text field in the ContentBlock object is blank.")
            if "image" in block:
                image = block["image"]
                if image.get("format") not in ("png", "jpeg", "gif", "webp") or not image.get(
                    "source"
                ):
                    raise _bad(f"messages.{i}: invalid image block")
            if "toolUse" in block:
                uses_tools = True
                uses.add(block["toolUse"]["toolUseId"])
            if "toolResult" in block:
                uses_tools = True
                if block["toolResult"]["toolUseId"] not in previous_uses:
                    raise _bad(
                        "The toolResult blocks do not match the toolUse blocks "
                        "of the previous turn."
                    )
        previous_uses = uses
    if uses_tools and not body.get("toolConfig"):
        raise _bad(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        )
    config = body.get("toolConfig")
    if config is not None:
        for tool in config.get("tools") or []:
            spec = tool.get("toolSpec") or {}
            if not re.match(r"^[a-zA-Z0-9_-]{1,64}$", str(spec.get("name"))) or "json" not in (
                spec.get("inputSchema") or {}
            ):
                raise _bad("invalid toolSpec")
