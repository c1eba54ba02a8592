"""Provider adapters, one module per wire format, registered by kind in `ADAPTERS`.

A module listed in `ADAPTER_MODULES` exposes `PROVIDER_ADAPTERS: dict[str, ProviderAdapter]`
(one module can serve several kinds, e.g. every OpenAI-wire provider). Modules not written yet
are skipped, so adapters land independently; a kind without an adapter is refused at routing.
"""

from __future__ import annotations

import importlib
import importlib.util

from gateway.providers.base import ProviderAdapter

ADAPTER_MODULES = (
    "gateway.providers.openai_compatible",
    "gateway.providers.anthropic",
    "gateway.providers.gemini",
    "gateway.providers.bedrock",
)


def _load_adapters() -> dict[str, ProviderAdapter]:
    adapters: dict[str, ProviderAdapter] = {}
    for name in ADAPTER_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        module = importlib.import_module(name)
        adapters.update(module.PROVIDER_ADAPTERS)
    return adapters


ADAPTERS: dict[str, ProviderAdapter] = _load_adapters()

__all__ = ["ADAPTERS", "ADAPTER_MODULES"]
