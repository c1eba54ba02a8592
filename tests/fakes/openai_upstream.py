"""A fake OpenAI-wire provider: a real HTTP server speaking OpenAI's format, for tests and benches.

One `FakeOpenAIUpstream` plays one provider kind (OpenAI, DeepSeek, OpenRouter, xAI, Ollama,
Doubao, Poe) with that kind's quirks: its path prefix, its usage fields (DeepSeek's
`prompt_cache_hit_tokens`, xAI's reasoning beside `completion_tokens`, OpenRouter's `cost`),
and its stream comment lines (`: keep-alive`, `: OPENROUTER PROCESSING`).

Tests steer it per request: `fake.script.append(Behaviour(...))` makes the next request answer
an error, wait, cut the stream, or report given usage; `fake.default` applies otherwise. Every
request is recorded in `fake.requests`.

Standalone (benchmarks):
    python -m tests.fakes.openai_upstream --kind openai --port 9100 [--latency-ms 0] [--chunks 16]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import threading
import time
from collections import deque
from typing import Any

import msgspec
from aiohttp import web

_encode = msgspec.json.encode
_decode = msgspec.json.decode

PREFIXES = {
    "openai": "/v1",
    "deepseek": "",
    "openrouter": "/api/v1",
    "xai": "/v1",
    "ollama": "/v1",
    "doubao": "/api/v3",
    "poe": "/v1",
}


class Behaviour(msgspec.Struct, kw_only=True):
    """How the fake answers one request."""

    status: int = 200
    error_message: str = "the fake upstream was told to fail"
    error_code: str | None = None
    retry_after: str | None = None
    # Seconds before the response starts (latency, or a hang to trigger read timeouts).
    latency: float = 0.0
    # Seconds between streamed chunks.
    chunk_delay: float = 0.0
    # Number of content chunks (one word each) in a completion.
    chunks: int = 8
    # Streams: drop the connection after this many content chunks (no usage, no [DONE]).
    disconnect_after: int | None = None
    # Streams: send an in-stream error event after this many content chunks.
    error_after: int | None = None
    # Streams: end without a usage chunk.
    omit_usage: bool = False
    # Streams: after this many content chunks, wait until `resume` is set (the test decides
    # when the rest comes, instead of racing a delay). A threading.Event: the fakes run on
    # their own loop.
    pause_after: int | None = None
    resume: threading.Event | None = None
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # Exact usage object to report instead of the computed one.
    usage: dict[str, Any] | None = None


class RecordedRequest(msgspec.Struct):
    path: str
    headers: dict[str, str]
    body: Any


def prompt_token_count(body: dict[str, Any]) -> int:
    """The fake's tokenizer: one token per 4 characters of text, plus 3 per message."""
    text = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                text += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        text += len(part["text"])
        return math.ceil(text / 4) + 3 * len(messages)
    prompt = body.get("prompt", body.get("input", ""))
    items = prompt if isinstance(prompt, list) else [prompt]
    count = 0
    for item in items:
        if isinstance(item, str):
            count += math.ceil(len(item) / 4) or 1
        elif isinstance(item, list):
            count += len(item)
        elif isinstance(item, int):
            count += 1
    return count


class FakeOpenAIUpstream:
    def __init__(
        self,
        kind: str = "openai",
        *,
        api_key: str | None = "sk-fake",
        default: Behaviour | None = None,
    ) -> None:
        if kind not in PREFIXES:
            raise ValueError(f"unknown OpenAI-wire kind {kind!r}")
        self.kind = kind
        self.api_key = api_key
        self.default = default or Behaviour()
        self.script: deque[Behaviour] = deque()
        self.requests: list[RecordedRequest] = []
        self.record = True
        self.completed_streams = 0
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.host = "127.0.0.1"
        prefix = PREFIXES[kind]
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post(prefix + "/chat/completions", self._chat)
        self.app.router.add_post(prefix + "/completions", self._completions)
        self.app.router.add_post(prefix + "/embeddings", self._embeddings)
        self.app.router.add_post(prefix + "/images/generations", self._images)
        self.app.router.add_get(prefix + "/models", self._models)

    @property
    def base_url(self) -> str:
        """What a credential's `base_url` is set to so the gateway calls this fake."""
        return f"http://{self.host}:{self.port}{PREFIXES[self.kind]}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeOpenAIUpstream:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096)
        await site.start()
        server = site._server
        assert server is not None
        self.host = host
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- helpers ------------------------------------------------------------------------------

    def _next(self) -> Behaviour:
        return self.script.popleft() if self.script else self.default

    async def _begin(self, request: web.Request) -> tuple[Behaviour, dict[str, Any]] | web.Response:
        behaviour = self._next()
        raw = await request.read()
        try:
            body = _decode(raw) if raw else {}
        except msgspec.DecodeError:
            return self._error(400, "invalid JSON body", "invalid_request_error", None)
        if self.record:
            self.requests.append(RecordedRequest(request.path, dict(request.headers), body))
        if behaviour.latency:
            await asyncio.sleep(behaviour.latency)
        if self.api_key is not None and self.kind != "ollama":
            if request.headers.get("Authorization") != f"Bearer {self.api_key}":
                return self._error(
                    401, "Incorrect API key provided", "invalid_request_error", "invalid_api_key"
                )
        if behaviour.status >= 400:
            headers = {"retry-after": behaviour.retry_after} if behaviour.retry_after else None
            return self._error(
                behaviour.status,
                behaviour.error_message,
                "server_error" if behaviour.status >= 500 else "invalid_request_error",
                behaviour.error_code,
                headers,
            )
        if not isinstance(body, dict):
            return self._error(400, "body must be an object", "invalid_request_error", None)
        return behaviour, body

    def _error(
        self,
        status: int,
        message: str,
        type_: str,
        code: str | None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        if self.kind == "openrouter":
            payload: dict[str, Any] = {"error": {"code": status, "message": message}}
        else:
            payload = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        return web.Response(
            body=_encode(payload), status=status, content_type="application/json", headers=headers
        )

    def _usage(self, behaviour: Behaviour, prompt: int, completion: int) -> dict[str, Any]:
        if behaviour.usage is not None:
            return behaviour.usage
        # Ollama reports neither cache nor reasoning details.
        reasoning = 0 if self.kind == "ollama" else behaviour.reasoning_tokens
        cached = min(behaviour.cached_tokens, prompt)
        usage: dict[str, Any] = {"prompt_tokens": prompt}
        if self.kind == "xai":
            # xAI: reasoning beside completion_tokens, counted in the total.
            usage["completion_tokens"] = completion
            usage["total_tokens"] = prompt + completion + reasoning
        else:
            usage["completion_tokens"] = completion + reasoning
            usage["total_tokens"] = prompt + completion + reasoning
        if self.kind == "ollama":
            return usage
        details: dict[str, Any] = {"cached_tokens": cached}
        if behaviour.cache_write_tokens:
            details["cache_write_tokens"] = behaviour.cache_write_tokens
        usage["prompt_tokens_details"] = details
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning}
        if self.kind == "deepseek":
            usage["prompt_cache_hit_tokens"] = cached
            usage["prompt_cache_miss_tokens"] = prompt - cached
        if self.kind == "openrouter":
            usage["cost"] = 0.000123
        return usage

    @staticmethod
    def _words(behaviour: Behaviour, body: dict[str, Any]) -> list[str]:
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        count = behaviour.chunks
        if isinstance(limit, int) and limit > 0:
            count = min(count, limit)
        return [f"w{i} " for i in range(count)]

    # --- endpoints ------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        behaviour, body = begun
        model = str(body.get("model", ""))
        words = self._words(behaviour, body)
        prompt = prompt_token_count(body)
        usage = self._usage(behaviour, prompt, len(words))
        created = int(time.time())
        ident = ("chatcmpl-" if chat else "cmpl-") + format(id(words), "x")
        if not body.get("stream"):
            text = "".join(words)
            finish = "length" if len(words) < behaviour.chunks else "stop"
            choice: dict[str, Any]
            if chat:
                choice = {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                if body.get("tools"):
                    choice["message"]["tool_calls"] = [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q":"x"}'},
                        }
                    ]
                    choice["finish_reason"] = "tool_calls"
            else:
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            payload = {
                "id": ident,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
                "system_fingerprint": "fp_fake",
            }
            return web.Response(body=_encode(payload), content_type="application/json")
        return await self._stream(request, behaviour, body, words, usage, ident, created, chat)

    async def _stream(
        self,
        request: web.Request,
        behaviour: Behaviour,
        body: dict[str, Any],
        words: list[str],
        usage: dict[str, Any],
        ident: str,
        created: int,
        chat: bool,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        model = str(body.get("model", ""))
        obj = "chat.completion.chunk" if chat else "text_completion"
        options = body.get("stream_options")
        with_usage = isinstance(options, dict) and options.get("include_usage") is True

        def chunk(choices: list[dict[str, Any]], usage_value: Any = None) -> bytes:
            payload: dict[str, Any] = {
                "id": ident,
                "object": obj,
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choices,
            }
            if with_usage:
                payload["usage"] = usage_value
            return b"data: " + _encode(payload) + b"\n\n"

        def delta(text: str | None, finish: str | None, role: bool = False) -> dict[str, Any]:
            if not chat:
                return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            d: dict[str, Any] = {}
            if role:
                d["role"] = "assistant"
            if text is not None:
                d["content"] = text
            return {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}

        if self.kind == "openrouter":
            await response.write(b": OPENROUTER PROCESSING\n\n")
        if chat:
            await response.write(chunk([delta("", None, role=True)]))
        for i, word in enumerate(words):
            if i == behaviour.pause_after and behaviour.resume is not None:
                while not behaviour.resume.is_set():
                    await asyncio.sleep(0.01)
            if behaviour.disconnect_after is not None and i >= behaviour.disconnect_after:
                # Cut the connection mid-stream: no usage, no [DONE].
                transport = request.transport
                if transport is not None:
                    transport.abort()
                return response
            if behaviour.error_after is not None and i >= behaviour.error_after:
                error = {
                    "error": {
                        "message": "upstream overloaded mid-stream",
                        "type": "server_error",
                        "code": 502 if self.kind == "openrouter" else "server_error",
                    }
                }
                await response.write(b"data: " + _encode(error) + b"\n\n")
                await response.write_eof()
                return response
            if behaviour.chunk_delay:
                await asyncio.sleep(behaviour.chunk_delay)
            if self.kind == "deepseek" and i == len(words) // 2:
                await response.write(b": keep-alive\n\n")
            await response.write(chunk([delta(word, None)]))
        finish = "length" if len(words) < behaviour.chunks else "stop"
        await response.write(chunk([delta(None if chat else "", finish)]))
        if with_usage and not behaviour.omit_usage:
            await response.write(chunk([], usage))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        self.completed_streams += 1
        return response

    async def _embeddings(self, request: web.Request) -> web.Response:
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        _, body = begun
        raw_input = body.get("input", "")
        inputs = (
            raw_input
            if isinstance(raw_input, list) and not all(isinstance(x, int) for x in raw_input)
            else [raw_input]
        )
        data = []
        for i, item in enumerate(inputs):
            seed = len(str(item)) + i
            vector = [round(((seed * (k + 1)) % 97) / 97, 6) for k in range(8)]
            if body.get("encoding_format") == "base64":
                packed = b"".join(int(v * 1e6).to_bytes(4, "little", signed=True) for v in vector)
                data.append(
                    {
                        "object": "embedding",
                        "index": i,
                        "embedding": base64.b64encode(packed).decode(),
                    }
                )
            else:
                data.append({"object": "embedding", "index": i, "embedding": vector})
        prompt = prompt_token_count(body)
        payload = {
            "object": "list",
            "data": data,
            "model": body.get("model"),
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return web.Response(body=_encode(payload), content_type="application/json")

    async def _images(self, request: web.Request) -> web.Response:
        begun = await self._begin(request)
        if isinstance(begun, web.Response):
            return begun
        _, body = begun
        n = body.get("n") if isinstance(body.get("n"), int) else 1
        if body.get("response_format") == "b64_json":
            data = [{"b64_json": base64.b64encode(b"fake-png-%d" % i).decode()} for i in range(n)]
        else:
            data = [
                {"url": f"https://images.example/{i}.png", "revised_prompt": body.get("prompt")}
                for i in range(n)
            ]
        payload = {"created": int(time.time()), "data": data}
        return web.Response(body=_encode(payload), content_type="application/json")

    async def _models(self, _request: web.Request) -> web.Response:
        payload = {
            "object": "list",
            "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": self.kind}],
        }
        return web.Response(body=_encode(payload), content_type="application/json")


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeOpenAIUpstream(
        args.kind,
        api_key=args.api_key or None,
        default=Behaviour(latency=args.latency_ms / 1000, chunks=args.chunks),
    )
    fake.record = False
    await fake.start(args.host, args.port)
    print(f"fake {args.kind} upstream on {fake.base_url}", flush=True)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--kind", default="openai", choices=sorted(PREFIXES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--api-key", default="sk-fake")
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--chunks", type=int, default=16)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_serve(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
