"""Provider adapters by credential kind (`tally provider add --kind ...`)."""

from __future__ import annotations

from .anthropic import AnthropicAdapter
from .base import ProviderAdapter
from .bedrock import BedrockAdapter
from .gemini import GeminiAdapter

ADAPTERS: dict[str, ProviderAdapter] = {
    adapter.kind: adapter for adapter in (AnthropicAdapter(), GeminiAdapter(), BedrockAdapter())
}
