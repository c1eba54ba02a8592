"""Request and response shapes of the OpenAI-compatible API (msgspec).

Requests are validated against these Structs, but forwarded as the caller's own JSON object, so
fields the gateway does not know (tools, response_format, provider extensions) pass through
untouched. Only the fields the gateway acts on are declared; unknown ones are allowed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

# Absurd values are refused before anything is held or sent upstream.
MAX_OUTPUT_TOKENS = 1_000_000
MAX_CHOICES = 16

PositiveTokens = Annotated[int, msgspec.Meta(ge=1, le=MAX_OUTPUT_TOKENS)]
ModelName = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    role: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    # A string, or content parts (text, image_url, input_audio, ...), or null (tool calls).
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/chat/completions`; other OpenAI fields are accepted and passed through."""

    model: ModelName
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    max_tokens: PositiveTokens | None = None
    max_completion_tokens: PositiveTokens | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHOICES)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


TokenId = Annotated[int, msgspec.Meta(ge=0)]
# A string, a list of strings, a list of token ids, or a list of token-id lists (msgspec allows
# one array type per union, so the list's items carry the choice).
PromptInput = str | list[str | TokenId | list[TokenId]]


class CompletionRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/completions` (legacy text completions)."""

    model: ModelName
    prompt: PromptInput
    max_tokens: PositiveTokens = 16
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHOICES)] = 1
    best_of: Annotated[int, msgspec.Meta(ge=1, le=MAX_CHOICES)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/embeddings`."""

    model: ModelName
    input: PromptInput
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None


class ImagesRequest(msgspec.Struct, kw_only=True):
    """`POST /v1/images/generations`."""

    model: ModelName
    prompt: Annotated[str, msgspec.Meta(min_length=1)]
    n: Annotated[int, msgspec.Meta(ge=1, le=10)] = 1
    size: str | None = None
    quality: str | None = None
    response_format: Literal["url", "b64_json"] | None = None


# --- responses (documentation of what the gateway answers; bodies come from upstream) ---------


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int = 0
    total_tokens: int
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None
    # What the request cost the tenant, in nano-credits (1 credit = 10^9).
    cost_nano: int


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: Usage


class TextCompletion(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[dict[str, Any]]
    usage: Usage


class Embeddings(msgspec.Struct, kw_only=True):
    object: Literal["list"]
    data: list[dict[str, Any]]
    model: str
    usage: Usage


class ImagesResponse(msgspec.Struct, kw_only=True):
    created: int
    data: list[dict[str, Any]]
    usage: Usage | None = None


class Model(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "tally"
    context_window: int | None = None
    max_output_tokens: int | None = None
    modalities: list[str] = msgspec.field(default_factory=lambda: ["text"])


class ModelList(msgspec.Struct, kw_only=True):
    object: Literal["list"] = "list"
    data: list[Model]
