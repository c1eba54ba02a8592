"""The gateway's request flows: authenticate, validate, admit, call upstream, meter, answer.

Each flow writes its answer straight to the ASGI `send` (the fast path and the Litestar routes
share them). Order on every paid path (design invariants 4 and 5):

    hold (admission) → upstream → price actual usage → settle → durable UsageRecorded → respond

For streams the final usage chunk and `data: [DONE]` go out only after the event committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar, cast

import msgspec

from gateway import schemas
from gateway.auth import Caller, KeyCache, api_key_from_headers
from gateway.catalog import CatalogCache, ModelEntry, Route
from gateway.errors import (
    InvalidRequest,
    ModelNotFound,
    NotFound,
    PermissionDenied,
    UpstreamFailed,
)
from gateway.http_client import Response
from gateway.metering import Call, Meter, UsageStatus, estimate_tokens, new_call, utcnow
from gateway.prices import PriceCache
from gateway.providers.base import MODEL_MAX_OUTPUT_KEY, UnsupportedFeature, UpstreamError
from gateway.providers.inbound import (
    InboundStreamEncoder,
    InboundTranslator,
    NativeInboundAdapter,
    anthropic_inbound,
)
from gateway.providers.openai_compatible import image_price_key
from gateway.upstream import Upstream
from tally.http import bind_tenant
from tally.log import get_logger
from tally.pricing import TokenUsage

log = get_logger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = Mapping[str, str]
S = TypeVar("S")

_encode = msgspec.json.encode
_JSON = (b"content-type", b"application/json")
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_DONE = b"data: [DONE]\n\n"


def decode_body(body: bytes, schema: type[S]) -> tuple[dict[str, Any], S]:
    """The request as the caller's own JSON object (forwarded) and as validated fields."""
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    try:
        raw = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}.") from None
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not valid UTF-8.") from None
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        parsed = msgspec.convert(raw, schema)
    except msgspec.ValidationError as exc:
        message = str(exc)
        param = None
        if " - at `$." in message:
            message, _, where = message.partition(" - at `$.")
            param = where.rstrip("`")
        raise InvalidRequest(
            f"{message}" + (f" (at '{param}')" if param else ""), param=param
        ) from None
    return raw, parsed


class Gateway:
    """Everything one gateway process needs to serve `/v1/*`."""

    def __init__(
        self,
        *,
        keys: KeyCache,
        catalog: CatalogCache,
        prices: PriceCache,
        meter: Meter,
        upstream: Upstream,
        default_max_output_tokens: int,
        image_part_tokens: int,
        disconnect_drain_s: float,
    ) -> None:
        self.keys = keys
        self.catalog = catalog
        self.prices = prices
        self.meter = meter
        self.upstream = upstream
        self._default_max_output = default_max_output_tokens
        self._image_part_tokens = image_part_tokens
        self._drain_s = disconnect_drain_s

    # --- shared steps -----------------------------------------------------------------------

    async def authenticate(self, headers: Headers) -> Caller:
        key = api_key_from_headers(headers.get("authorization"), headers.get("x-api-key"))
        caller = await self.keys.authenticate(key)
        bind_tenant(caller.tenant_id)
        return caller

    async def model_for(self, caller: Caller, name: str) -> ModelEntry:
        model = await self.catalog.get(name)
        if model is None or not model.enabled:
            raise ModelNotFound(
                f"The model '{name}' does not exist or you do not have access to it.",
                param="model",
            )
        if not caller.may_use(name):
            raise PermissionDenied(
                f"This API key is not allowed to use the model '{name}'.",
                param="model",
                code="model_not_allowed",
            )
        return model

    async def begin(
        self,
        *,
        request_id: str,
        endpoint: str,
        caller: Caller,
        model: ModelEntry,
        input_tokens: int,
        max_output_tokens: int,
        tpm_estimate: int,
        images: dict[str, int] | None = None,
    ) -> Call:
        """Price the worst case and admit the request (rate limits, caps, credit hold)."""
        started_at = utcnow()
        tariff = await self.prices.price(caller.tenant_id, model.name, started_at)
        if tariff is None:
            raise InvalidRequest(
                f"The model '{model.name}' has no price yet, so it cannot be served.",
                param="model",
                code="model_not_priced",
            )
        if model.context_window is not None:
            input_tokens = min(input_tokens, model.context_window)
        worst = self.meter.worst_case(
            tariff, input_tokens=input_tokens, max_output_tokens=max_output_tokens, images=images
        )
        call = new_call(
            request_id=request_id,
            endpoint=endpoint,
            caller=caller,
            model=model,
            tariff=tariff,
            started=time.perf_counter(),
            started_at=started_at,
            worst_case_nano=worst,
            tpm_estimate=tpm_estimate,
        )
        await self.meter.admit(call)
        return call

    def output_cap(self, model: ModelEntry, requested: int | None) -> int:
        if requested is not None:
            if model.max_output_tokens is not None and requested > model.max_output_tokens:
                raise InvalidRequest(
                    f"max_tokens is too large: {requested}. The model '{model.name}' supports "
                    f"at most {model.max_output_tokens} output tokens.",
                    param="max_tokens",
                )
            return requested
        return model.max_output_tokens or self._default_max_output

    def _headers(self, call: Call, charge_nano: int | None) -> list[tuple[bytes, bytes]]:
        headers = [_JSON] if charge_nano is not None else []
        if charge_nano is not None:
            headers.append((b"x-tally-charge-nano", str(charge_nano).encode()))
        headers.append((b"x-tally-overhead-ms", f"{call.overhead_ms():.3f}".encode()))
        headers.extend(call.rate_limit_headers())
        return headers

    async def _send_json(
        self, send: Send, call: Call, payload: dict[str, Any], charge_nano: int
    ) -> None:
        body = _encode(payload)
        headers = self._headers(call, charge_nano)
        # A length lets the server send the body as it is, not as one chunk of a chunked body.
        headers.append((b"content-length", b"%d" % len(body)))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _read(self, call: Call, response: Response) -> bytes:
        started = time.perf_counter()
        try:
            return await response.read()
        except (TimeoutError, OSError) as exc:
            raise UpstreamFailed(
                f"The provider's answer was cut off ({type(exc).__name__})."
            ) from None
        finally:
            response.release()
            call.attempt.upstream_s += time.perf_counter() - started

    async def _unary(
        self,
        call: Call,
        send: Send,
        build: Callable[[Route], Any],
        parse: Callable[[Route, bytes], tuple[dict[str, Any], TokenUsage]],
    ) -> None:
        """A non-streamed call: upstream, parse, meter, answer with usage.cost_nano."""
        try:
            response = await self.upstream.send(call.model, build, call.attempt)
            body = await self._read(call, response)
            assert call.attempt.route is not None
            payload, usage = parse(call.attempt.route, body)
        except UpstreamError as exc:
            await self.meter.release(call)
            raise UpstreamFailed(exc.message, status=502, code=exc.code) from None
        except BaseException:
            await self.meter.release(call)
            raise
        charge = await self.meter.record(call, usage, status="ok")
        if "model" in payload:
            payload["model"] = call.model.name
        existing = payload.get("usage")
        usage_out = existing if isinstance(existing, dict) else usage_dict(usage)
        usage_out["cost_nano"] = charge.charge_nano
        payload["usage"] = usage_out
        await self._send_json(send, call, payload, charge.charge_nano)

    # --- endpoints ----------------------------------------------------------------------------

    async def models(self, headers: Headers, send: Send) -> None:
        caller = await self.authenticate(headers)
        models = await self.catalog.all()
        data = [
            schemas.Model(
                id=m.name,
                created=m.created,
                context_window=m.context_window,
                max_output_tokens=m.max_output_tokens,
                modalities=m.modalities,
            )
            for m in sorted(models.values(), key=lambda m: m.name)
            if m.enabled and m.routes and caller.may_use(m.name)
        ]
        body = _encode(schemas.ModelList(data=data))
        length = (b"content-length", b"%d" % len(body))
        await send({"type": "http.response.start", "status": 200, "headers": [_JSON, length]})
        await send({"type": "http.response.body", "body": body})

    async def chat(
        self,
        request_id: str,
        headers: Headers,
        body: bytes,
        send: Send,
        disconnected: asyncio.Event,
    ) -> None:
        caller = await self.authenticate(headers)
        raw, request = decode_body(body, schemas.ChatCompletionRequest)
        await self._chat(request_id, caller, raw, request, len(body), send, disconnected, None)

    async def messages(
        self,
        request_id: str,
        headers: Headers,
        body: bytes,
        send: Send,
        disconnected: asyncio.Event,
    ) -> None:
        """Anthropic's `/v1/messages`: translated to a chat completion and back, or passed
        through as it is when the route is Anthropic's own (same holds and metering)."""
        inbound = anthropic_inbound()
        if inbound is None:
            raise NotFound("The Anthropic Messages API is not available on this gateway.")
        caller = await self.authenticate(headers)
        anthropic_body, _ = decode_body(body, dict)
        refused: UnsupportedFeature | None = None
        try:
            raw = inbound.request_to_openai(anthropic_body)
        except UnsupportedFeature as exc:
            # Only the native provider understands it: the translation then just sizes the
            # hold, and routes to other providers refuse the request (see `_chat`).
            raw = inbound.request_to_openai(anthropic_body, native_only=True)
            refused = exc
        try:
            request = msgspec.convert(raw, schemas.ChatCompletionRequest)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"Unsupported Messages request: {exc}") from None
        await self._chat(
            request_id,
            caller,
            raw,
            request,
            len(body),
            send,
            disconnected,
            inbound,
            native_body=anthropic_body,
            refused=refused,
        )

    async def _chat(
        self,
        request_id: str,
        caller: Caller,
        raw: dict[str, Any],
        request: schemas.ChatCompletionRequest,
        body_size: int,
        send: Send,
        disconnected: asyncio.Event,
        inbound: InboundTranslator | None,
        *,
        native_body: dict[str, Any] | None = None,
        refused: UnsupportedFeature | None = None,
    ) -> None:
        """A chat completion; with `inbound`, answered in that format (`native_body` is the
        caller's own body, passed through to routes of `inbound.native_kind`; `refused`, when
        set, is why the other routes cannot take it)."""
        model = await self.model_for(caller, request.model)
        output = self.output_cap(model, request.max_completion_tokens or request.max_tokens)
        if request.max_completion_tokens is None and request.max_tokens is None:
            # Providers that need a cap (Anthropic) get the one the hold was sized for.
            raw = {**raw, MODEL_MAX_OUTPUT_KEY: output}
        text_bytes, media_parts = _message_sizes(request.messages, body_size)
        input_bound = text_bytes + media_parts * self._image_part_tokens
        call = await self.begin(
            request_id=request_id,
            endpoint="chat.completions",
            caller=caller,
            model=model,
            # A token is never shorter than one byte of UTF-8: bytes bound the input tokens.
            input_tokens=input_bound,
            max_output_tokens=output * request.n,
            tpm_estimate=estimate_tokens(text_bytes)
            + media_parts * self._image_part_tokens
            + output * request.n,
        )

        def native(route: Route) -> bool:
            return (
                native_body is not None
                and inbound is not None
                and route.adapter.kind == inbound.native_kind
                and hasattr(route.adapter, "messages_request")
            )

        def build(route: Route, stream: bool) -> Any:
            if native(route):
                adapter = cast(NativeInboundAdapter, route.adapter)
                assert native_body is not None
                return adapter.messages_request(
                    route.credential, route.upstream_model, native_body, stream=stream
                )
            if refused is not None:
                raise refused
            return route.adapter.chat_request(
                route.credential, route.upstream_model, raw, stream=stream
            )

        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            await self._stream(
                call,
                send,
                disconnected,
                lambda route: build(route, True),
                include_usage=include_usage,
                input_estimate=estimate_tokens(text_bytes) + media_parts * 85,
                chat=True,
                encoder=inbound.stream_encoder(model.name) if inbound else None,
                relay=native,
            )
            return

        def parse(route: Route, data: bytes) -> tuple[dict[str, Any], TokenUsage]:
            if native(route):
                return cast(NativeInboundAdapter, route.adapter).messages_usage(data)
            result = route.adapter.chat_response(data)
            if inbound is None:
                return result.response, result.usage
            message = inbound.response_from_openai(result.response, result.usage, model=model.name)
            return message, result.usage

        await self._unary(call, send, lambda route: build(route, False), parse)

    async def completions(
        self,
        request_id: str,
        headers: Headers,
        body: bytes,
        send: Send,
        disconnected: asyncio.Event,
    ) -> None:
        caller = await self.authenticate(headers)
        raw, request = decode_body(body, schemas.CompletionRequest)
        model = await self.model_for(caller, request.model)
        output = self.output_cap(model, request.max_tokens)
        choices = max(request.n, request.best_of or 1)
        prompt_bound, prompt_estimate = _prompt_sizes(request.prompt)
        call = await self.begin(
            request_id=request_id,
            endpoint="completions",
            caller=caller,
            model=model,
            input_tokens=prompt_bound,
            max_output_tokens=output * choices,
            tpm_estimate=prompt_estimate + output * choices,
        )

        def build(route: Route) -> Any:
            completions = getattr(route.adapter, "completions_request", None)
            if completions is None:
                raise UnsupportedFeature(
                    f"The provider '{route.credential.kind}' does not offer /v1/completions."
                )
            return completions(route.credential, route.upstream_model, raw, stream=request.stream)

        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            await self._stream(
                call,
                send,
                disconnected,
                build,
                include_usage=include_usage,
                input_estimate=prompt_estimate,
                chat=False,
            )
            return

        def parse(route: Route, data: bytes) -> tuple[dict[str, Any], TokenUsage]:
            result = route.adapter.completions_response(data)  # type: ignore[attr-defined]
            return result.response, result.usage

        await self._unary(call, send, build, parse)

    async def embeddings(
        self,
        request_id: str,
        headers: Headers,
        body: bytes,
        send: Send,
        disconnected: asyncio.Event,
    ) -> None:
        caller = await self.authenticate(headers)
        raw, request = decode_body(body, schemas.EmbeddingsRequest)
        if request.input == "" or request.input == []:
            raise InvalidRequest("input must not be empty.", param="input")
        model = await self.model_for(caller, request.model)
        bound, estimate = _prompt_sizes(request.input)
        call = await self.begin(
            request_id=request_id,
            endpoint="embeddings",
            caller=caller,
            model=model,
            input_tokens=bound,
            max_output_tokens=0,
            tpm_estimate=estimate,
        )
        await self._unary(
            call,
            send,
            lambda route: route.adapter.embeddings_request(
                route.credential, route.upstream_model, raw
            ),
            lambda route, data: route.adapter.embeddings_response(data, request_body=raw),
        )

    async def images(
        self,
        request_id: str,
        headers: Headers,
        body: bytes,
        send: Send,
        disconnected: asyncio.Event,
    ) -> None:
        caller = await self.authenticate(headers)
        raw, request = decode_body(body, schemas.ImagesRequest)
        model = await self.model_for(caller, request.model)
        prompt_bytes = len(request.prompt.encode())
        call = await self.begin(
            request_id=request_id,
            endpoint="images.generations",
            caller=caller,
            model=model,
            input_tokens=prompt_bytes,
            max_output_tokens=0,
            tpm_estimate=estimate_tokens(prompt_bytes),
            images={image_price_key(raw): request.n},
        )
        await self._unary(
            call,
            send,
            lambda route: route.adapter.images_request(route.credential, route.upstream_model, raw),
            lambda route, data: route.adapter.images_response(data, raw),
        )

    # --- streaming ----------------------------------------------------------------------------

    async def _stream(
        self,
        call: Call,
        send: Send,
        disconnected: asyncio.Event,
        build: Callable[[Route], Any],
        *,
        include_usage: bool,
        input_estimate: int,
        chat: bool,
        encoder: InboundStreamEncoder | None = None,
        relay: Callable[[Route], bool] | None = None,
    ) -> None:
        """Stream a response; routes for which `relay` is true speak the inbound format
        natively: their bytes go to the client unchanged, and the adapter's translator only
        meters them."""
        if encoder is not None:
            include_usage = True  # the inbound format decides what of the usage it shows
        try:
            response = await self.upstream.send(call.model, build, call.attempt)
        except BaseException:
            await self.meter.release(call)
            raise
        route = call.attempt.route
        assert route is not None
        translator = route.adapter.stream_translator(call.model.name)
        relaying = relay is not None and relay(route)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": _SSE_HEADERS + self._headers(call, None),
            }
        )
        streamed_chars = 0
        # A finish_reason means the provider ended the generation properly, even if it then
        # reports no usage (some OpenAI-compatible servers ignore include_usage).
        finished = False
        ttft_ms: int | None = None
        last_chunk: dict[str, Any] | None = None
        usage_chunk: dict[str, Any] | None = None
        failure: UpstreamError | None = None
        drain_deadline: float | None = None
        client_gone = False
        upstream_started = time.perf_counter()
        loop = asyncio.get_running_loop()
        stop_reading: asyncio.TimerHandle | None = None

        def client_left(_: object) -> None:
            # A stalled provider would keep the read below waiting past the drain window:
            # once it is over, closing the upstream connection ends the read.
            nonlocal stop_reading
            stop_reading = loop.call_later(self._drain_s, response.close)

        leaving = loop.create_task(disconnected.wait())
        leaving.add_done_callback(client_left)
        try:
            while True:
                if disconnected.is_set() and drain_deadline is None:
                    client_gone = True
                    drain_deadline = time.monotonic() + self._drain_s
                if drain_deadline is not None:
                    remaining = drain_deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        data = await asyncio.wait_for(response.readany(), remaining)
                    except TimeoutError:
                        break
                else:
                    data = await response.readany()
                chunks = translator.feed(data) if data else translator.finish()
                out: list[bytes] = []
                for chunk in chunks:
                    last_chunk = chunk
                    choices = chunk.get("choices")
                    if not choices and chunk.get("usage") is not None:
                        usage_chunk = chunk
                        continue
                    if "usage" in chunk:
                        if include_usage:
                            chunk["usage"] = None
                        else:
                            del chunk["usage"]
                    if choices:
                        chars = _streamed_chars(choices)
                        if not finished:
                            finished = _has_finish_reason(choices)
                        if chars and ttft_ms is None:
                            ttft_ms = int((time.perf_counter() - call.started) * 1000)
                        streamed_chars += chars
                    if relaying:
                        continue
                    if encoder is not None:
                        out.append(encoder.feed(chunk))
                    else:
                        out.append(b"data: " + _encode(chunk) + b"\n\n")
                if relaying and data:
                    out = [data]
                if out and not client_gone:
                    await send(
                        {"type": "http.response.body", "body": b"".join(out), "more_body": True}
                    )
                if translator.error is not None:
                    failure = translator.error
                    break
                if not data:
                    break
        except (TimeoutError, OSError) as exc:
            failure = UpstreamError(
                502, f"The provider's stream broke off ({type(exc).__name__}).", code="stream_error"
            )
        finally:
            leaving.remove_done_callback(client_left)
            leaving.cancel()
            if stop_reading is not None:
                stop_reading.cancel()
            response.release()
            call.attempt.upstream_s += time.perf_counter() - upstream_started
        if disconnected.is_set():
            client_gone = True

        usage = translator.usage
        complete = failure is None and (usage is not None or finished)
        estimated = usage is None
        if usage is None:
            # No usage from upstream (cut stream, or the client left and the drain timed out):
            # count what was streamed.
            usage = TokenUsage(
                input_tokens=input_estimate, output_tokens=estimate_tokens(streamed_chars)
            )
        status: UsageStatus = "ok"
        if client_gone:
            status = "client_disconnected"
        elif failure is not None or not complete:
            status = "error"
        if not complete and streamed_chars == 0 and translator.usage is None:
            # Nothing was generated: the failed call is not charged.
            await self.meter.release(call)
            failure = failure or UpstreamError(
                502, "The provider ended the stream without any output.", code="stream_error"
            )
            await self._end_stream_with_error(
                send,
                failure,
                client_gone,
                encoder,
                relayed=relaying and failure is translator.error,
            )
            return
        charge = await self.meter.record(
            call, usage, status=status, estimated=estimated, ttft_ms=ttft_ms
        )
        if client_gone:
            return
        if failure is not None or not complete:
            failure = failure or UpstreamError(
                502, "The provider ended the stream without finishing it.", code="stream_error"
            )
            await self._end_stream_with_error(
                send,
                failure,
                client_gone,
                encoder,
                relayed=relaying and failure is translator.error,
            )
            return
        if encoder is not None:
            # Relayed: the provider's own closing events already went out.
            body = b"" if relaying else encoder.finish(usage)
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        tail = []
        if include_usage:
            final = usage_chunk or {
                "id": (last_chunk or {}).get("id", f"chatcmpl-{call.request_id}"),
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": (last_chunk or {}).get("created", int(time.time())),
                "model": call.model.name,
                "choices": [],
            }
            existing = final.get("usage")
            usage_out = existing if isinstance(existing, dict) else usage_dict(usage)
            usage_out["cost_nano"] = charge.charge_nano
            final["usage"] = usage_out
            tail.append(b"data: " + _encode(final) + b"\n\n")
        tail.append(_DONE)
        await send({"type": "http.response.body", "body": b"".join(tail), "more_body": False})

    async def _end_stream_with_error(
        self,
        send: Send,
        failure: UpstreamError,
        client_gone: bool,
        encoder: InboundStreamEncoder | None = None,
        *,
        relayed: bool = False,
    ) -> None:
        if client_gone:
            return
        if relayed:
            # The provider's own in-stream error event was relayed already.
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if encoder is not None:
            status = failure.status if failure.status >= 400 else 502
            body = encoder.error(status, failure.message, failure.type)
        else:
            error = {
                "message": failure.message,
                "type": "upstream_error",
                "param": None,
                "code": failure.code or "upstream_error",
            }
            body = b"data: " + _encode({"error": error}) + b"\n\n"
        await send({"type": "http.response.body", "body": body, "more_body": False})


def usage_dict(usage: TokenUsage) -> dict[str, Any]:
    """OpenAI-style usage from normalised counts (when the provider gave none to pass on)."""
    prompt = usage.total_input_tokens
    completion = usage.total_output_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _message_sizes(messages: list[schemas.ChatMessage], body_bytes: int) -> tuple[int, int]:
    """(text bytes, media parts): the body's bytes less inline media, and the media count."""
    media = 0
    inline = 0
    for message in messages:
        if isinstance(message.content, list):
            for part in message.content:
                kind = part.get("type")
                if kind == "image_url":
                    media += 1
                    image = part.get("image_url")
                    url = image.get("url") if isinstance(image, dict) else None
                    inline += len(url) if isinstance(url, str) else 0
                elif kind in ("input_audio", "file"):
                    media += 1
                    inline += len(_encode(part))
    return max(body_bytes - inline, 0), media


def _prompt_sizes(prompt: Any) -> tuple[int, int]:
    """(upper bound, realistic estimate) of the tokens of a prompt or embeddings input."""
    if isinstance(prompt, str):
        size = len(prompt.encode())
        return size + 1, estimate_tokens(size) + 1
    if isinstance(prompt, list):
        bound = estimate = 0
        for item in prompt:
            if isinstance(item, int):
                bound += 1
                estimate += 1
            else:
                b, e = _prompt_sizes(item)
                bound += b
                estimate += e
        return bound, estimate
    return 0, 0


def _has_finish_reason(choices: list[Any]) -> bool:
    for choice in choices:  # a loop, not any(): this runs for every chunk of every stream
        if isinstance(choice, dict) and choice.get("finish_reason"):
            return True
    return False


def _streamed_chars(choices: list[Any]) -> int:
    chars = 0
    for choice in choices:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        if isinstance(delta, dict):
            for name in ("content", "reasoning_content", "reasoning", "refusal"):
                value = delta.get(name)
                if isinstance(value, str):
                    chars += len(value)
            calls = delta.get("tool_calls")
            if isinstance(calls, list):
                for tool_call in calls:
                    function = tool_call.get("function") if isinstance(tool_call, dict) else None
                    if isinstance(function, dict):
                        chars += len(str(function.get("arguments") or ""))
                        chars += len(str(function.get("name") or ""))
        text = choice.get("text")
        if isinstance(text, str):
            chars += len(text)
    return chars
